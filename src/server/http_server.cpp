#include "server/http_server.h"

#include <httplib.h>

#include <cstdio>

#include "core/error.h"
#include "core/log.h"
#include "server/api_error.h"
#include "server/sse.h"

namespace clawmine::server {
namespace {

constexpr const char* kJson = "application/json";

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(error_body(e), kJson);
}

// The route name for metrics: known paths as they are, everything else lumped together.
std::string route_name(const std::string& path) {
  static const char* kRoutes[] = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health",
                                  "/metrics", "/tokenize", "/detokenize"};
  for (const char* r : kRoutes)
    if (path == r) return r;
  return "other";
}

}  // namespace

HttpServer::HttpServer(HttpOptions http, ServiceOptions service)
    : http_(std::move(http)), service_(std::make_unique<Service>(std::move(service))),
      server_(std::make_unique<httplib::Server>()) {
  const int threads = http_.http_threads;
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  server_->set_payload_max_length(http_.max_body_bytes);
  server_->set_keep_alive_max_count(1000);
  install_routes();
}

HttpServer::~HttpServer() {
  stop();
  if (loader_.joinable()) loader_.join();
}

void HttpServer::stop() { server_->stop(); }

void HttpServer::install_routes() {
  Service* svc = service_.get();  // captured by value: route lambdas outlive this function
  auto& s = *server_;

  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (http_.cors) {
      res.set_header("Access-Control-Allow-Origin", "*");
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      if (req.method == "OPTIONS") {
        res.status = 204;
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    if (!http_.api_key.empty() && req.path != "/health" &&
        req.get_header_value("Authorization") != "Bearer " + http_.api_key) {
      send_error(res, ApiError(401, "authentication_error",
                               req.has_header("Authorization") ? "Incorrect API key provided"
                                                               : "Missing API key: send 'Authorization: Bearer <key>'",
                               {}, "invalid_api_key"));
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  // Statuses produced by httplib itself (404 route, 413 body, 400 framing) get an OpenAI body.
  s.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty() || res.status == 204) return httplib::Server::HandlerResponse::Unhandled;
    ApiError e(res.status, "invalid_request_error", str_cat("HTTP ", res.status));
    if (res.status == 404) e = ApiError(404, "not_found_error", str_cat("Unknown route: ", req.method, " ", req.path));
    if (res.status == 405) e = ApiError(405, "invalid_request_error", str_cat("Method not allowed: ", req.method, " ", req.path));
    if (res.status == 413)
      e = ApiError(413, "invalid_request_error", "The request body is too large", {}, "request_too_large");
    send_error(res, e);
    return httplib::Server::HandlerResponse::Handled;
  }));
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    send_error(res, to_api_error(ep));
  });
  s.set_logger([svc](const httplib::Request& req, const httplib::Response& res) {
    svc->metrics().count_http(route_name(req.path), res.status);
  });

  auto guarded = [svc](auto body) {
    return [svc, body](const httplib::Request& req, httplib::Response& res) {
      try {
        if (!svc->ready()) {
          const std::string err = svc->load_error();
          throw ApiError(503, "server_error", err.empty() ? "The model is still loading" : "The model failed to load: " + err,
                         {}, "model_not_ready");
        }
        body(req, res);
      } catch (...) {
        send_error(res, to_api_error(std::current_exception()));
      }
    };
  };

  s.Get("/health", [svc](const httplib::Request&, httplib::Response& res) {
    if (svc->ready()) {
      res.set_content(R"({"status":"ok"})", kJson);
      return;
    }
    const std::string err = svc->load_error();
    send_error(res, ApiError(503, "server_error", err.empty() ? "The model is still loading" : "The model failed to load: " + err,
                             {}, "model_not_ready"));
  });
  s.Get("/metrics", [svc](const httplib::Request&, httplib::Response& res) {
    res.set_content(svc->metrics_text(), "text/plain; version=0.0.4");
  });
  s.Get("/v1/models", guarded([svc](const httplib::Request&, httplib::Response& res) {
          res.set_content(svc->models_json(), kJson);
        }));
  s.Post("/tokenize", guarded([svc](const httplib::Request& req, httplib::Response& res) {
           res.set_content(svc->tokenize(req.body), kJson);
         }));
  s.Post("/detokenize", guarded([svc](const httplib::Request& req, httplib::Response& res) {
           res.set_content(svc->detokenize(req.body), kJson);
         }));

  auto completion = [svc](bool chat) {
    return [svc, chat](const httplib::Request& req, httplib::Response& res) {
      std::shared_ptr<Service::Job> job = chat ? svc->start_chat(req.body) : svc->start_completion(req.body);
      if (!job->stream()) {
        res.set_content(job->run(), kJson);
        return;
      }
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider("text/event-stream", [job](size_t, httplib::DataSink& sink) {
        job->run_stream([&sink](const std::string& chunk) { return sink.is_writable() && sink.write(chunk.data(), chunk.size()); });
        sink.done();
        return true;
      });
    };
  };
  s.Post("/v1/chat/completions", guarded(completion(true)));
  s.Post("/v1/completions", guarded(completion(false)));
}

void HttpServer::run() {
  const int port = http_.port == 0 ? server_->bind_to_any_port(http_.host) : server_->bind_to_port(http_.host, http_.port) ? http_.port : -1;
  if (port < 0) throw Error(str_cat("cannot listen on ", http_.host, ":", http_.port, " (address in use or not available)"));
  std::printf("clawmine: listening on http://%s:%d\n", http_.host.c_str(), port);
  std::fflush(stdout);
  loader_ = std::thread([this] {
    try {
      service_->load();
      log_info("serve", "model '", service_->model_name(), "' ready");
    } catch (const std::exception& e) {
      log_warn("serve", "loading the model failed: ", e.what());
    }
  });
  server_->listen_after_bind();
}

}  // namespace clawmine::server
