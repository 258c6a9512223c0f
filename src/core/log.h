// One logger with levels and a component tag, written to stderr (stdout is program output).
// Level comes from CLAWMINE_LOG (error|warn|info|debug), read once in diag/env.
#pragma once

#include <string>

#include "core/error.h"

namespace clawmine {

enum class LogLevel { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

void set_log_level(LogLevel level);
LogLevel log_level();
void log_message(LogLevel level, const char* component, const std::string& message);

template <typename... Args>
void log_info(const char* component, Args&&... args) {
  if (log_level() >= LogLevel::kInfo) log_message(LogLevel::kInfo, component, str_cat(args...));
}
template <typename... Args>
void log_warn(const char* component, Args&&... args) {
  if (log_level() >= LogLevel::kWarn) log_message(LogLevel::kWarn, component, str_cat(args...));
}
template <typename... Args>
void log_debug(const char* component, Args&&... args) {
  if (log_level() >= LogLevel::kDebug) log_message(LogLevel::kDebug, component, str_cat(args...));
}

}  // namespace clawmine
