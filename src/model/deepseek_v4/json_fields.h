// Typed reads of the members of one JSON object, for the config parsers. A JSON null counts as
// absent (transformers treats None as "use the default"). Every error names the source file and
// the dotted field path, e.g. "/m/config.json: field 'rope_scaling.factor' must be a number, got
// string \"16\"".
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace clawmine::model::deepseek_v4 {

// Parses JSON text that must hold an object; throws clawmine::Error naming `source`.
nlohmann::json parse_json_object(const std::string& text, const std::string& source);

class JsonFields {
 public:
  // `obj` must outlive this reader. `prefix` is the dotted path of `obj` inside the file ("" for
  // the root).
  JsonFields(const nlohmann::json& obj, std::string source, std::string prefix = "");

  const std::string& source() const { return source_; }
  std::string path(const std::string& key) const;  // prefix + key, for messages
  bool has(const std::string& key) const;           // present and not null
  const nlohmann::json* get(const std::string& key) const;  // null/absent -> nullptr

  std::optional<int64_t> opt_int(const std::string& key) const;
  std::optional<double> opt_number(const std::string& key) const;
  std::optional<std::string> opt_string(const std::string& key) const;
  std::optional<bool> opt_bool(const std::string& key) const;
  std::optional<std::vector<int64_t>> opt_int_array(const std::string& key) const;
  std::optional<std::vector<std::string>> opt_string_array(const std::string& key) const;
  // Reader of a nested object member; nullopt when absent.
  std::optional<JsonFields> opt_object(const std::string& key) const;

  int64_t req_int(const std::string& key) const;
  std::string req_string(const std::string& key) const;

  // "<source>: field '<path>' <what>"
  [[noreturn]] void fail(const std::string& key, const std::string& what) const;
  [[noreturn]] void fail_missing(const std::string& key) const;
  // "must be <expected>, got <type> <value>" for a member of the wrong JSON type.
  [[noreturn]] void fail_type(const std::string& key, const nlohmann::json& value,
                              const char* expected) const;

  const nlohmann::json& json() const { return *obj_; }

 private:
  const nlohmann::json* obj_;
  std::string source_;
  std::string prefix_;
};

}  // namespace clawmine::model::deepseek_v4
