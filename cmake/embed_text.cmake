# Writes OUT: a C++ file defining whale::serve::kChatPage with the bytes of IN.
file(READ "${IN}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE "${OUT}" "// Generated from ${IN}. Do not edit.\n#include <string_view>\nnamespace whale::serve {\nstatic const unsigned char kBytes[] = {${bytes} 0};\nextern const std::string_view kChatPage(reinterpret_cast<const char*>(kBytes), sizeof(kBytes) - 1);\n}\n")
