// Strings escape only '"', '\\' and control characters below 0x20 (\n, \r, \t, \b, \f by name,
// others as \u00XX), as Python does with ensure_ascii=False.
#include "tokenizer/python_json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace clawmine::tokenizer {
namespace {

void append_string(std::string& out, const std::string& s) {
  out.push_back('"');
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(ch);
        }
    }
  }
  out.push_back('"');
}

// Python's float repr: shortest round-trip digits, "1.0" for integral values, exponent form
// outside 1e-4 <= |x| < 1e16 (two-digit exponent: 1e-05).
void append_float(std::string& out, double v) {
  if (std::isnan(v)) { out += "NaN"; return; }
  if (std::isinf(v)) { out += v > 0 ? "Infinity" : "-Infinity"; return; }
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*e", precision - 1, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  // buf = d.ddde±XX; rebuild in Python's layout.
  std::string mantissa(buf, std::strchr(buf, 'e'));
  const int exponent = std::atoi(std::strchr(buf, 'e') + 1);
  const bool negative = mantissa[0] == '-';
  if (negative) mantissa.erase(0, 1);
  std::string digits;
  for (char c : mantissa) if (c != '.') digits.push_back(c);
  std::string text;
  if (exponent >= -4 && exponent < 16) {
    const int point = exponent + 1;  // digits before the decimal point
    if (point <= 0) {
      text = "0." + std::string(-point, '0') + digits;
    } else if (point >= static_cast<int>(digits.size())) {
      text = digits + std::string(point - digits.size(), '0') + ".0";
    } else {
      text = digits.substr(0, point) + "." + digits.substr(point);
    }
  } else {
    text = digits.substr(0, 1);
    if (digits.size() > 1) text += "." + digits.substr(1);
    char e[16];  // a double's exponent has at most 3 digits; room for any int keeps -Wformat-truncation quiet
    std::snprintf(e, sizeof(e), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    text += e;
  }
  if (negative) out.push_back('-');
  out += text;
}

void append(std::string& out, const nlohmann::ordered_json& v) {
  switch (v.type()) {
    case nlohmann::ordered_json::value_t::null: out += "null"; break;
    case nlohmann::ordered_json::value_t::boolean: out += v.get<bool>() ? "true" : "false"; break;
    case nlohmann::ordered_json::value_t::number_integer: out += std::to_string(v.get<int64_t>()); break;
    case nlohmann::ordered_json::value_t::number_unsigned: out += std::to_string(v.get<uint64_t>()); break;
    case nlohmann::ordered_json::value_t::number_float: append_float(out, v.get<double>()); break;
    case nlohmann::ordered_json::value_t::string: append_string(out, v.get_ref<const std::string&>()); break;
    case nlohmann::ordered_json::value_t::array: {
      out.push_back('[');
      bool first = true;
      for (const auto& e : v) {
        if (!first) out += ", ";
        first = false;
        append(out, e);
      }
      out.push_back(']');
      break;
    }
    case nlohmann::ordered_json::value_t::object: {
      out.push_back('{');
      bool first = true;
      for (const auto& [k, e] : v.items()) {
        if (!first) out += ", ";
        first = false;
        append_string(out, k);
        out += ": ";
        append(out, e);
      }
      out.push_back('}');
      break;
    }
    default: out += "null"; break;
  }
}

}  // namespace

std::string python_json(const nlohmann::ordered_json& value) {
  std::string out;
  append(out, value);
  return out;
}

}  // namespace clawmine::tokenizer
