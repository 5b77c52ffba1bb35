#include "core/error.h"

namespace whale {

std::string Error::to_string() const {
  std::string out;
  if (!file.empty()) out += file + ": ";
  if (!field.empty()) out += field + ": ";
  out += message;
  if (!hint.empty()) out += " (hint: " + hint + ")";
  return out;
}

Error make_error(std::string message, std::string field, std::string file, std::string hint) {
  return Error{std::move(message), std::move(file), std::move(field), std::move(hint)};
}

}  // namespace whale
