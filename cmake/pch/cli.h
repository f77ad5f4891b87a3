// Precompiled for the crest and crestd programs (CREST_PCH): agent.h and the CLI parser.
#pragma once

#include "agent.h"

#include <CLI/CLI.hpp>
