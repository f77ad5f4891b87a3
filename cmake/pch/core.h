// Precompiled for crest's own libraries (CREST_PCH, see the top CMakeLists.txt): headers that
// most of their files include, parsed once per target instead of once per file.
#pragma once

#include <spdlog/spdlog.h>

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
