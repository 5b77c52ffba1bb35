// The instruction sets the CPU kernels are compiled for, chosen at run time.
#pragma once

#include <string_view>
#include <vector>

namespace whale::cpu {

enum class Isa { kPortable, kAvx2, kAvx512 };

std::string_view isa_name(Isa isa);
// Instruction sets this machine can run, portable first.
std::vector<Isa> supported_isas();
Isa best_isa();

}  // namespace whale::cpu
