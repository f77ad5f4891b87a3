// Precompiled for the agent and the tests (CREST_PCH): core.h and the JSON library.
#pragma once

#include "core.h"

#include <nlohmann/json.hpp>
