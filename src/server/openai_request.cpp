#include "server/openai_request.h"

#include <cmath>
#include <limits>

#include "core/error.h"
#include "server/api_error.h"
#include "tokenizer/utf8.h"

namespace clawmine::server {
namespace {

using Json = nlohmann::ordered_json;
constexpr int64_t kMaxN = 16;
constexpr int64_t kMaxTopLogprobs = 20;
constexpr size_t kMaxStop = 4;

const char* type_name(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return "a boolean";
    case Json::value_t::string: return "a string";
    case Json::value_t::array: return "an array";
    case Json::value_t::object: return "an object";
    case Json::value_t::number_float: return "a float";
    default: return "an integer";
  }
}

ApiError wrong_type(const std::string& field, const char* expected, const Json& got) {
  return invalid_request(str_cat("'", field, "' must be ", expected, ", got ", type_name(got)), field);
}

// The field if present and not null.
const Json* field(const Json& obj, const char* name) {
  auto it = obj.find(name);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

std::optional<bool> get_bool(const Json& obj, const char* name, const std::string& path) {
  const Json* v = field(obj, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) throw wrong_type(path, "a boolean", *v);
  return v->get<bool>();
}

std::optional<double> get_number(const Json& obj, const char* name, double lo, double hi) {
  const Json* v = field(obj, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) throw wrong_type(name, "a number", *v);
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    throw invalid_request(str_cat("'", name, "' must be between ", lo, " and ", hi, ", got ", v->dump()), name);
  return x;
}

std::optional<int64_t> get_int(const Json& obj, const char* name, int64_t lo, int64_t hi, const std::string& path) {
  const Json* v = field(obj, name);
  if (!v) return std::nullopt;
  if (!v->is_number_integer()) throw wrong_type(path, "an integer", *v);
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    throw invalid_request(str_cat("'", path, "' must be at most ", hi, ", got ", v->dump()), path);
  const int64_t x = v->get<int64_t>();
  if (x < lo) throw invalid_request(str_cat("'", path, "' must be at least ", lo, ", got ", x), path);
  if (x > hi) throw invalid_request(str_cat("'", path, "' must be at most ", hi, ", got ", x), path);
  return x;
}

std::optional<std::string> get_string(const Json& obj, const char* name, const std::string& path) {
  const Json* v = field(obj, name);
  if (!v) return std::nullopt;
  if (!v->is_string()) throw wrong_type(path, "a string", *v);
  return v->get<std::string>();
}

void parse_generation(const Json& body, GenerationFields& g) {
  if (auto m = get_string(body, "model", "model")) g.model = *m;
  g.stream = get_bool(body, "stream", "stream").value_or(false);
  if (const Json* so = field(body, "stream_options")) {
    if (!so->is_object()) throw wrong_type("stream_options", "an object", *so);
    if (!g.stream) throw invalid_request("'stream_options' is only allowed when 'stream' is true", "stream_options");
    for (const auto& [k, v] : so->items())
      if (k != "include_usage" && k != "continuous_usage_stats")
        throw invalid_request(str_cat("unknown field 'stream_options.", k, "'"), "stream_options." + k);
    g.include_usage = get_bool(*so, "include_usage", "stream_options.include_usage").value_or(false);
  }
  constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();
  auto max_tokens = get_int(body, "max_tokens", 1, kMaxInt, "max_tokens");
  auto max_completion = get_int(body, "max_completion_tokens", 1, kMaxInt, "max_completion_tokens");
  g.max_tokens = max_completion ? max_completion : max_tokens;
  if (auto t = get_number(body, "temperature", 0, 2)) g.sampling.temperature = static_cast<float>(*t);
  if (auto p = get_number(body, "top_p", 0, 1)) {
    if (*p <= 0) throw invalid_request("'top_p' must be greater than 0 and at most 1, got 0", "top_p");
    g.sampling.top_p = static_cast<float>(*p);
  }
  if (auto k = get_int(body, "top_k", -1, kMaxInt, "top_k")) g.sampling.top_k = *k < 0 ? 0 : *k;
  if (auto m = get_number(body, "min_p", 0, 1)) g.sampling.min_p = static_cast<float>(*m);
  if (auto p = get_number(body, "presence_penalty", -2, 2)) g.sampling.presence_penalty = static_cast<float>(*p);
  if (auto f = get_number(body, "frequency_penalty", -2, 2)) g.sampling.frequency_penalty = static_cast<float>(*f);
  if (const Json* s = field(body, "seed")) {
    if (!s->is_number_integer()) throw wrong_type("seed", "an integer", *s);
    g.sampling.seed = s->is_number_unsigned() ? s->get<uint64_t>() : static_cast<uint64_t>(s->get<int64_t>());
    g.seed_given = true;
  }
  if (const Json* s = field(body, "stop")) {
    if (s->is_string()) {
      g.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      if (s->size() > kMaxStop) throw invalid_request(str_cat("'stop' may hold at most ", kMaxStop, " strings, got ", s->size()), "stop");
      for (size_t i = 0; i < s->size(); ++i) {
        if (!(*s)[i].is_string()) throw wrong_type(str_cat("stop[", i, "]"), "a string", (*s)[i]);
        g.stop.push_back((*s)[i].get<std::string>());
      }
    } else {
      throw wrong_type("stop", "a string or an array of strings", *s);
    }
    for (const auto& x : g.stop)
      if (x.empty()) throw invalid_request("'stop' strings must not be empty", "stop");
  }
  g.n = get_int(body, "n", 1, kMaxN, "n").value_or(1);
  g.ignore_eos = get_bool(body, "ignore_eos", "ignore_eos").value_or(false);
}

std::string content_text(const Json& content, const std::string& path) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) throw wrong_type(path, "a string or an array of content parts", content);
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const Json& part = content[i];
    const std::string p = str_cat(path, "[", i, "]");
    if (!part.is_object()) throw wrong_type(p, "an object", part);
    auto type = get_string(part, "type", p + ".type");
    if (!type) throw invalid_request(str_cat("'", p, ".type' is required"), p + ".type");
    if (*type != "text")
      throw invalid_request(str_cat("'", p, ".type' must be 'text' (this model reads text only), got '", *type, "'"), p + ".type");
    auto t = get_string(part, "text", p + ".text");
    if (!t) throw invalid_request(str_cat("'", p, ".text' is required"), p + ".text");
    text += *t;
  }
  return text;
}

tokenizer::ChatMessage parse_message(const Json& m, size_t index) {
  const std::string path = str_cat("messages[", index, "]");
  if (!m.is_object()) throw wrong_type(path, "an object", m);
  auto role = get_string(m, "role", path + ".role");
  if (!role) throw invalid_request(str_cat("'", path, ".role' is required"), path + ".role");
  static const char* kRoles[] = {"system", "developer", "user", "assistant", "tool"};
  if (std::find(std::begin(kRoles), std::end(kRoles), *role) == std::end(kRoles))
    throw invalid_request(str_cat("'", path, ".role' must be one of system, developer, user, assistant, tool; got '", *role, "'"),
                          path + ".role");
  tokenizer::ChatMessage out;
  out.role = *role;
  if (const Json* c = field(m, "content")) out.content = content_text(*c, path + ".content");
  if (auto name = get_string(m, "name", path + ".name")) out.name = *name;
  if (*role == "assistant") {
    if (auto r = get_string(m, "reasoning_content", path + ".reasoning_content")) out.reasoning_content = *r;
    if (const Json* calls = field(m, "tool_calls")) {
      if (!calls->is_array()) throw wrong_type(path + ".tool_calls", "an array", *calls);
      for (size_t i = 0; i < calls->size(); ++i) {
        const Json& c = (*calls)[i];
        const std::string cp = str_cat(path, ".tool_calls[", i, "]");
        if (!c.is_object()) throw wrong_type(cp, "an object", c);
        const Json* fn = field(c, "function");
        if (!fn || !fn->is_object()) throw invalid_request(str_cat("'", cp, ".function' must be an object"), cp + ".function");
        tokenizer::ChatToolCall call;
        call.id = get_string(c, "id", cp + ".id").value_or("");
        auto name = get_string(*fn, "name", cp + ".function.name");
        if (!name || name->empty()) throw invalid_request(str_cat("'", cp, ".function.name' is required"), cp + ".function.name");
        call.name = *name;
        call.arguments = get_string(*fn, "arguments", cp + ".function.arguments").value_or("{}");
        const Json args = Json::parse(call.arguments, nullptr, false);
        if (!args.is_object())
          throw invalid_request(str_cat("'", cp, ".function.arguments' must be a JSON object text"), cp + ".function.arguments");
        out.tool_calls.push_back(std::move(call));
      }
    }
    if (!out.content && out.tool_calls.empty())
      throw invalid_request(str_cat("'", path, ".content' is required unless tool_calls are given"), path + ".content");
  } else {
    if (!out.content) throw invalid_request(str_cat("'", path, ".content' is required for role '", *role, "'"), path + ".content");
  }
  if (*role == "tool") {
    auto id = get_string(m, "tool_call_id", path + ".tool_call_id");
    if (!id) throw invalid_request(str_cat("'", path, ".tool_call_id' is required for role 'tool'"), path + ".tool_call_id");
    out.tool_call_id = *id;
  }
  return out;
}

void parse_tools(const Json& body, ChatRequest& r, Json& tools) {
  if (const Json* t = field(body, "tools")) {
    if (!t->is_array()) throw wrong_type("tools", "an array", *t);
    for (size_t i = 0; i < t->size(); ++i) {
      const Json& tool = (*t)[i];
      const std::string p = str_cat("tools[", i, "]");
      if (!tool.is_object()) throw wrong_type(p, "an object", tool);
      if (get_string(tool, "type", p + ".type").value_or("") != "function")
        throw invalid_request(str_cat("'", p, ".type' must be 'function'"), p + ".type");
      const Json* fn = field(tool, "function");
      if (!fn || !fn->is_object()) throw invalid_request(str_cat("'", p, ".function' must be an object"), p + ".function");
      auto name = get_string(*fn, "name", p + ".function.name");
      if (!name || name->empty()) throw invalid_request(str_cat("'", p, ".function.name' is required"), p + ".function.name");
      if (const Json* params = field(*fn, "parameters"); params && !params->is_object())
        throw wrong_type(p + ".function.parameters", "an object", *params);
    }
    tools = *t;
  }
  if (const Json* c = field(body, "tool_choice")) {
    if (c->is_string()) {
      const auto s = c->get<std::string>();
      if (s != "auto" && s != "none" && s != "required")
        throw invalid_request(str_cat("'tool_choice' must be 'auto', 'none', 'required' or a function object, got '", s, "'"), "tool_choice");
      r.tool_choice = s;
    } else if (c->is_object()) {
      const Json* fn = field(*c, "function");
      auto name = fn && fn->is_object() ? get_string(*fn, "name", "tool_choice.function.name") : std::nullopt;
      if (!name) throw invalid_request("'tool_choice.function.name' is required", "tool_choice.function.name");
      bool found = false;
      for (const auto& tool : tools.is_array() ? tools : Json::array())
        found = found || tool["function"]["name"] == *name;
      if (!found) throw invalid_request(str_cat("'tool_choice' names function '", *name, "', which is not in 'tools'"), "tool_choice");
      r.tool_choice = *name;
    } else {
      throw wrong_type("tool_choice", "a string or an object", *c);
    }
    if (r.tool_choice != "none" && r.tool_choice != "auto" && tools.is_null())
      throw invalid_request("'tool_choice' requires 'tools'", "tool_choice");
  }
}

ChatRequest parse_chat(const Json& body) {
  ChatRequest r;
  parse_generation(body, r.gen);
  const Json* msgs = field(body, "messages");
  if (!msgs) throw invalid_request("'messages' is required", "messages");
  if (!msgs->is_array()) throw wrong_type("messages", "an array", *msgs);
  if (msgs->empty()) throw invalid_request("'messages' must not be empty", "messages");
  for (size_t i = 0; i < msgs->size(); ++i) r.messages.push_back(parse_message((*msgs)[i], i));

  const bool logprobs = get_bool(body, "logprobs", "logprobs").value_or(false);
  auto top = get_int(body, "top_logprobs", 0, kMaxTopLogprobs, "top_logprobs");
  if (top && !logprobs) throw invalid_request("'top_logprobs' requires 'logprobs' to be true", "top_logprobs");
  if (logprobs) r.gen.logprobs = top.value_or(0);

  Json tools;
  parse_tools(body, r, tools);
  Json format;
  if (const Json* f = field(body, "response_format")) {
    if (!f->is_object()) throw wrong_type("response_format", "an object", *f);
    const auto type = get_string(*f, "type", "response_format.type");
    if (!type || (*type != "text" && *type != "json_object" && *type != "json_schema"))
      throw invalid_request("'response_format.type' must be 'text', 'json_object' or 'json_schema'", "response_format.type");
    if (*type == "json_schema" && !(field(*f, "json_schema") && (*f)["json_schema"].is_object()))
      throw invalid_request("'response_format.json_schema' must be an object", "response_format.json_schema");
    if (*type != "text") format = *f;
  }
  r.has_tools = tools.is_array() && !tools.empty() && r.tool_choice != "none";
  if (r.has_tools || !format.is_null()) {
    if (r.messages.front().role != "system") {
      tokenizer::ChatMessage system;
      system.role = "system";
      system.content = "";
      r.messages.insert(r.messages.begin(), std::move(system));
    }
    if (r.has_tools) r.messages.front().tools = tools;
    r.messages.front().response_format = format;
  }

  std::optional<bool> thinking;
  if (const Json* kw = field(body, "chat_template_kwargs")) {
    if (!kw->is_object()) throw wrong_type("chat_template_kwargs", "an object", *kw);
    thinking = get_bool(*kw, "thinking", "chat_template_kwargs.thinking");
    if (!thinking) thinking = get_bool(*kw, "enable_thinking", "chat_template_kwargs.enable_thinking");
  }
  if (auto effort = get_string(body, "reasoning_effort", "reasoning_effort")) {
    if (*effort == "max" || *effort == "xhigh") {
      r.encode.reasoning_effort = "max";
    } else if (*effort == "high" || *effort == "medium" || *effort == "low" || *effort == "minimal") {
      r.encode.reasoning_effort = "high";
    } else if (*effort != "none") {
      throw invalid_request(str_cat("'reasoning_effort' must be one of none, minimal, low, medium, high, max; got '", *effort, "'"),
                            "reasoning_effort");
    }
    if (!thinking) thinking = *effort != "none";
  }
  r.encode.thinking = thinking.value_or(false);
  if (!r.encode.thinking) r.encode.reasoning_effort.clear();
  return r;
}

int32_t token_id(const Json& v, const std::string& path) {
  if (!v.is_number_integer()) throw wrong_type(path, "an integer token id", v);
  if (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())
                             : (v.get<int64_t>() < 0 || v.get<int64_t>() > std::numeric_limits<int32_t>::max()))
    throw invalid_request(str_cat("'", path, "' is not a valid token id: ", v.dump()), path);
  return static_cast<int32_t>(v.get<int64_t>());
}

}  // namespace

Json parse_body(std::string_view body) {
  if (body.empty()) throw invalid_request("the request body is empty; expected a JSON object");
  if (!tokenizer::utf8_is_valid(body)) throw invalid_request("the request body is not valid UTF-8");
  Json j;
  try {
    j = Json::parse(body);
  } catch (const nlohmann::json::parse_error& e) {
    throw invalid_request(str_cat("the request body is not valid JSON: ", e.what()), {}, "invalid_json");
  }
  if (!j.is_object()) throw invalid_request(str_cat("the request body must be a JSON object, got ", type_name(j)));
  return j;
}

ChatRequest parse_chat_request(std::string_view body) { return parse_chat(parse_body(body)); }

CompletionRequest parse_completion_request(std::string_view body) {
  const Json j = parse_body(body);
  CompletionRequest r;
  parse_generation(j, r.gen);
  const Json* p = field(j, "prompt");
  if (!p) throw invalid_request("'prompt' is required", "prompt");
  if (p->is_string()) {
    r.prompt_text = p->get<std::string>();
  } else if (p->is_array() && !p->empty() && (*p)[0].is_string()) {
    if (p->size() != 1) throw invalid_request("'prompt' as an array of strings must hold exactly one string (batch prompts are not supported)", "prompt");
    r.prompt_text = (*p)[0].get<std::string>();
  } else if (p->is_array() && !p->empty()) {
    for (size_t i = 0; i < p->size(); ++i) r.prompt_ids.push_back(token_id((*p)[i], str_cat("prompt[", i, "]")));
  } else if (p->is_array()) {
    throw invalid_request("'prompt' must not be empty", "prompt");
  } else {
    throw wrong_type("prompt", "a string, an array of one string, or an array of token ids", *p);
  }
  if (r.prompt_text && r.prompt_text->empty()) throw invalid_request("'prompt' must not be empty", "prompt");
  r.echo = get_bool(j, "echo", "echo").value_or(false);
  if (const Json* lp = field(j, "logprobs"); lp && lp->is_boolean())
    throw wrong_type("logprobs", "an integer between 0 and 20 (completions API)", *lp);
  r.gen.logprobs = get_int(j, "logprobs", 0, kMaxTopLogprobs, "logprobs");
  if (field(j, "suffix")) throw invalid_request("'suffix' is not supported", "suffix");
  if (field(j, "best_of") && j["best_of"] != 1 && j["best_of"] != r.gen.n) throw invalid_request("'best_of' is not supported", "best_of");
  return r;
}

TokenizeRequest parse_tokenize_request(std::string_view body) {
  const Json j = parse_body(body);
  TokenizeRequest r;
  r.add_special_tokens = get_bool(j, "add_special_tokens", "add_special_tokens").value_or(true);
  if (field(j, "messages")) {
    r.chat = parse_chat(j);
  } else if (auto p = get_string(j, "prompt", "prompt")) {
    r.text = *p;
  } else {
    throw invalid_request("'prompt' (a string) or 'messages' is required", "prompt");
  }
  return r;
}

DetokenizeRequest parse_detokenize_request(std::string_view body) {
  const Json j = parse_body(body);
  const Json* t = field(j, "tokens");
  if (!t) throw invalid_request("'tokens' is required", "tokens");
  if (!t->is_array()) throw wrong_type("tokens", "an array of token ids", *t);
  DetokenizeRequest r;
  for (size_t i = 0; i < t->size(); ++i) r.tokens.push_back(token_id((*t)[i], str_cat("tokens[", i, "]")));
  return r;
}

}  // namespace clawmine::server
