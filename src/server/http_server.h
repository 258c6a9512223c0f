// The HTTP front: cpp-httplib routes for the OpenAI API (/v1/chat/completions,
// /v1/completions, /v1/models), /health, /metrics, /tokenize, /detokenize; Bearer auth on all
// but /health; a body size limit; CORS only when enabled; every failure answered with an
// OpenAI error object. The model loads in the background while /health says 503.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "server/service.h"

namespace httplib {
class Server;
}

namespace clawmine::server {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8000;               // 0: any free port
  std::string api_key;           // empty: no auth
  bool cors = false;
  size_t max_body_bytes = 8u << 20;
  int http_threads = 96;         // connections served at once
};

class HttpServer {
 public:
  HttpServer(HttpOptions http, ServiceOptions service);
  ~HttpServer();

  // Binds, starts loading the model, prints "listening on http://HOST:PORT", serves until stop().
  // Throws clawmine::Error when the address cannot be bound.
  void run();
  void stop();

 private:
  void install_routes();

  HttpOptions http_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<httplib::Server> server_;
  std::thread loader_;
};

}  // namespace clawmine::server
