// `clawmine tokenize | detokenize | chat-template`: the tokenizer and the DeepSeek V4 chat
// encoding from the command line. tokenize prints ids as a JSON list; detokenize prints text;
// chat-template prints the prompt text, then a line with its ids as a JSON list.
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "tokenizer/chat_encoding.h"
#include "tokenizer/tokenizer.h"

namespace clawmine::cli {
namespace {

struct TokenizerOptions {
  std::string model_dir;
  std::string text;
  std::string file;
  std::string ids;
  std::string messages_file;
  std::string tools_file;
  std::string reasoning_effort;
  bool thinking = false;
  bool add_special = false;
  bool skip_special = false;
};

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(str_cat(path, ": cannot open file"));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::ordered_json read_json_file(const std::string& path) {
  try {
    return nlohmann::ordered_json::parse(read_text_file(path));
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(str_cat(path, ": invalid JSON: ", e.what()));
  }
}

void print_ids(const std::vector<int32_t>& ids) { std::printf("%s\n", nlohmann::json(ids).dump().c_str()); }

void run_tokenize(const TokenizerOptions& o) {
  if (o.text.empty() == o.file.empty()) throw Error("tokenize: give exactly one of --text and --file");
  const auto tok = tokenizer::Tokenizer::load(o.model_dir);
  print_ids(tok.encode(o.file.empty() ? o.text : read_text_file(o.file), o.add_special));
}

void run_detokenize(const TokenizerOptions& o) {
  std::vector<int32_t> ids;
  std::stringstream ss(o.ids);
  for (std::string item; std::getline(ss, item, ',');) {
    try {
      size_t used = 0;
      ids.push_back(std::stoi(item, &used));
      if (item.find_first_not_of(" ", used) != std::string::npos) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw Error(str_cat("detokenize: --ids: '", item, "' is not an integer"));
    }
  }
  const auto tok = tokenizer::Tokenizer::load(o.model_dir);
  std::printf("%s\n", tok.decode(ids, o.skip_special).c_str());
}

void run_chat_template(const TokenizerOptions& o) {
  const auto doc = read_json_file(o.messages_file);
  auto messages = tokenizer::parse_chat_messages(doc);
  nlohmann::ordered_json tools;
  if (!o.tools_file.empty()) tools = read_json_file(o.tools_file);
  else if (doc.is_object() && doc.contains("tools")) tools = doc["tools"];
  if (!tools.is_null()) {
    if (!tools.is_array()) throw Error("chat-template: tools must be a JSON array");
    // OpenAI requests carry tools beside the messages; DeepSeek renders them in the system turn.
    if (messages.empty() || messages.front().role != "system") {
      tokenizer::ChatMessage system_turn;
      system_turn.role = "system";
      system_turn.content = "";
      messages.insert(messages.begin(), std::move(system_turn));
    }
    messages.front().tools = tools;
  }
  tokenizer::ChatEncodeOptions options;
  options.thinking = o.thinking;
  options.reasoning_effort = o.reasoning_effort;
  const std::string prompt = tokenizer::encode_messages(messages, options);
  const auto tok = tokenizer::Tokenizer::load(o.model_dir);
  std::printf("%s\n", prompt.c_str());
  print_ids(tok.encode(prompt));
}

}  // namespace

void add_tokenizer_commands(CLI::App& app) {
  auto o = std::make_shared<TokenizerOptions>();

  auto* tokenize = app.add_subcommand("tokenize", "Print the token ids of a text as a JSON list");
  tokenize->add_option("--model", o->model_dir, "Folder with tokenizer.json")->required();
  tokenize->add_option("--text", o->text, "Text to tokenize");
  tokenize->add_option("--file", o->file, "File whose contents to tokenize");
  tokenize->add_flag("--add-special-tokens", o->add_special, "Prepend BOS when tokenizer_config.json says so");
  tokenize->callback([o] { run_tokenize(*o); });

  auto* detokenize = app.add_subcommand("detokenize", "Print the text of comma-separated token ids");
  detokenize->add_option("--model", o->model_dir, "Folder with tokenizer.json")->required();
  detokenize->add_option("--ids", o->ids, "Token ids, e.g. 1,2,3")->required();
  detokenize->add_flag("--skip-special-tokens", o->skip_special, "Leave out special tokens");
  detokenize->callback([o] { run_detokenize(*o); });

  auto* chat = app.add_subcommand("chat-template", "Print the DeepSeek V4 prompt for chat messages, then its ids");
  chat->add_option("--model", o->model_dir, "Folder with tokenizer.json")->required();
  chat->add_option("--messages", o->messages_file, "JSON file: OpenAI-style messages (array or {\"messages\": ...})")->required();
  chat->add_option("--tools", o->tools_file, "JSON file: OpenAI tools array");
  chat->add_flag("--thinking", o->thinking, "Thinking mode (prompt ends with <think>)");
  chat->add_option("--reasoning-effort", o->reasoning_effort, "high or max")->check(CLI::IsMember({"high", "max"}));
  chat->callback([o] { run_chat_template(*o); });
}

}  // namespace clawmine::cli
