#include "server/api_error.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "runtime/scheduler.h"

namespace clawmine::server {

ApiError invalid_request(const std::string& message, const std::string& param, const std::string& code) {
  return ApiError(400, "invalid_request_error", message, param, code);
}

ApiError to_api_error(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const ApiError& e) {
    return e;
  } catch (const runtime::QueueFull& e) {
    return ApiError(429, "rate_limit_error", e.what(), {}, "queue_full");
  } catch (const runtime::NonFiniteLogits& e) {
    return ApiError(500, "server_error", e.what(), {}, "non_finite_logits");
  } catch (const std::bad_alloc&) {
    return ApiError(500, "server_error", "out of memory while serving the request", {}, "out_of_memory");
  } catch (const std::exception& e) {
    return ApiError(500, "server_error", e.what());
  } catch (...) {
    return ApiError(500, "server_error", "unknown internal error");
  }
}

std::string error_body(const ApiError& error) {
  nlohmann::json e{{"message", error.what()},
                   {"type", error.type},
                   {"param", error.param.empty() ? nlohmann::json(nullptr) : nlohmann::json(error.param)},
                   {"code", error.code.empty() ? nlohmann::json(nullptr) : nlohmann::json(error.code)}};
  return nlohmann::json{{"error", e}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace clawmine::server
