// Precompiled for the test programs (CREST_PCH): GoogleTest, the JSON library and the standard
// headers they all use (not spdlog: not every test program links it).
#pragma once

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>
