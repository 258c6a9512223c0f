// Typed JSON member reads with errors that name the file and the field (json_fields.h).
#include "model/deepseek_v4/json_fields.h"

#include <utility>

#include "core/error.h"

namespace clawmine::model::deepseek_v4 {

namespace {

// A short rendering of a value for messages; long values are cut.
std::string describe(const nlohmann::json& v) {
  std::string text = v.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return str_cat(v.type_name(), " ", text);
}

}  // namespace

nlohmann::json parse_json_object(const std::string& text, const std::string& source) {
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(str_cat(source, ": invalid JSON: ", e.what()));
  }
  if (!root.is_object()) throw Error(str_cat(source, ": expected a JSON object at the top level, got ", root.type_name()));
  return root;
}

JsonFields::JsonFields(const nlohmann::json& obj, std::string source, std::string prefix)
    : obj_(&obj), source_(std::move(source)), prefix_(std::move(prefix)) {}

std::string JsonFields::path(const std::string& key) const {
  return prefix_.empty() ? key : str_cat(prefix_, ".", key);
}

const nlohmann::json* JsonFields::get(const std::string& key) const {
  auto it = obj_->find(key);
  if (it == obj_->end() || it->is_null()) return nullptr;
  return &*it;
}

bool JsonFields::has(const std::string& key) const { return get(key) != nullptr; }

void JsonFields::fail(const std::string& key, const std::string& what) const {
  throw Error(str_cat(source_, ": field '", path(key), "' ", what));
}

void JsonFields::fail_missing(const std::string& key) const {
  throw Error(str_cat(source_, ": missing required field '", path(key), "'"));
}

void JsonFields::fail_type(const std::string& key, const nlohmann::json& value, const char* expected) const {
  fail(key, str_cat("must be ", expected, ", got ", describe(value)));
}

std::optional<int64_t> JsonFields::opt_int(const std::string& key) const {
  const nlohmann::json* v = get(key);
  if (!v) return std::nullopt;
  if (!v->is_number_integer()) fail_type(key, *v, "an integer");
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    fail(key, "is out of range");
  }
  return v->get<int64_t>();
}

std::optional<double> JsonFields::opt_number(const std::string& key) const {
  const nlohmann::json* v = get(key);
  if (!v) return std::nullopt;
  if (!v->is_number()) fail_type(key, *v, "a number");
  return v->get<double>();
}

std::optional<std::string> JsonFields::opt_string(const std::string& key) const {
  const nlohmann::json* v = get(key);
  if (!v) return std::nullopt;
  if (!v->is_string()) fail_type(key, *v, "a string");
  return v->get<std::string>();
}

std::optional<bool> JsonFields::opt_bool(const std::string& key) const {
  const nlohmann::json* v = get(key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) fail_type(key, *v, "a boolean");
  return v->get<bool>();
}

std::optional<std::vector<int64_t>> JsonFields::opt_int_array(const std::string& key) const {
  const nlohmann::json* v = get(key);
  if (!v) return std::nullopt;
  if (!v->is_array()) fail_type(key, *v, "a list of integers");
  std::vector<int64_t> out;
  for (size_t i = 0; i < v->size(); ++i) {
    const nlohmann::json& e = (*v)[i];
    if (!e.is_number_integer()) fail_type(str_cat(key, "[", i, "]"), e, "an integer");
    out.push_back(e.get<int64_t>());
  }
  return out;
}

std::optional<std::vector<std::string>> JsonFields::opt_string_array(const std::string& key) const {
  const nlohmann::json* v = get(key);
  if (!v) return std::nullopt;
  if (!v->is_array()) fail_type(key, *v, "a list of strings");
  std::vector<std::string> out;
  for (size_t i = 0; i < v->size(); ++i) {
    const nlohmann::json& e = (*v)[i];
    if (!e.is_string()) fail_type(str_cat(key, "[", i, "]"), e, "a string");
    out.push_back(e.get<std::string>());
  }
  return out;
}

std::optional<JsonFields> JsonFields::opt_object(const std::string& key) const {
  const nlohmann::json* v = get(key);
  if (!v) return std::nullopt;
  if (!v->is_object()) fail_type(key, *v, "an object");
  return JsonFields(*v, source_, path(key));
}

int64_t JsonFields::req_int(const std::string& key) const {
  std::optional<int64_t> v = opt_int(key);
  if (!v) fail_missing(key);
  return *v;
}

std::string JsonFields::req_string(const std::string& key) const {
  std::optional<std::string> v = opt_string(key);
  if (!v) fail_missing(key);
  return *v;
}

}  // namespace clawmine::model::deepseek_v4
