// The one place where failures become OpenAI error objects: ApiError carries the HTTP status,
// type, message, offending param and code; to_api_error maps any exception to one, and
// error_body renders {"error": {...}} exactly as OpenAI clients expect.
#pragma once

#include <exception>
#include <stdexcept>
#include <string>

namespace clawmine::server {

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string type, const std::string& message, std::string param = {}, std::string code = {})
      : std::runtime_error(message), status(status), type(std::move(type)), param(std::move(param)), code(std::move(code)) {}
  int status;
  std::string type;   // invalid_request_error, authentication_error, not_found_error, server_error, ...
  std::string param;  // the offending field ("messages[1].content"), or empty
  std::string code;   // machine-readable, or empty
};

// 400 invalid_request_error naming `param`.
ApiError invalid_request(const std::string& message, const std::string& param = {}, const std::string& code = {});

// Any exception → ApiError (clawmine::Error and unknown failures become 500 server_error).
ApiError to_api_error(std::exception_ptr error);

// {"error": {"message", "type", "param", "code"}} as JSON text.
std::string error_body(const ApiError& error);

}  // namespace clawmine::server
