#include "core/util/log.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <mutex>

#include "core/util/error.h"

namespace crest::log {
namespace {

struct Registry {
  std::mutex mutex;
  spdlog::sink_ptr sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  spdlog::level::level_enum level = spdlog::level::warn;
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

std::shared_ptr<spdlog::logger> get(const std::string& module) {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  if (auto existing = spdlog::get(module)) return existing;
  auto logger = std::make_shared<spdlog::logger>(module, r.sink);
  logger->set_level(r.level);
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v");
  spdlog::register_logger(logger);
  return logger;
}

void set_level(spdlog::level::level_enum level) {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  r.level = level;
  spdlog::apply_all([level](const std::shared_ptr<spdlog::logger>& l) { l->set_level(level); });
}

void set_file(const std::string& path) {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  try {
    r.sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path);
  } catch (const spdlog::spdlog_ex& e) {
    fail(Errc::io, "cannot open log file " + path + ": " + e.what());
  }
  spdlog::apply_all([&r](const std::shared_ptr<spdlog::logger>& l) { l->sinks() = {r.sink}; });
}

}  // namespace crest::log
