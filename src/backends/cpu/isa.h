// The instruction sets the CPU kernels are compiled for, chosen at run time.
#pragma once

#include <string_view>
#include <vector>

namespace whale::cpu {

// kAmx is kAvx512 plus AMX tiles for products of many tokens (prefill).
enum class Isa { kPortable, kAvx2, kAvx512, kAmx };

inline bool has_avx512(Isa isa) { return isa == Isa::kAvx512 || isa == Isa::kAmx; }

std::string_view isa_name(Isa isa);
// Instruction sets this machine can run, portable first.
std::vector<Isa> supported_isas();
// The best of them, or the one the WHALE_ISA environment variable names (portable, avx2,
// avx512, amx) when this machine has it.
Isa best_isa();

}  // namespace whale::cpu
