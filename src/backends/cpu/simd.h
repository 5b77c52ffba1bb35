// x86 vector intrinsics for the kernel files, each compiled per instruction set with target
// attributes (never with -m flags, so the rest of the program runs anywhere).
#pragma once

#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics start some results from an undefined vector, which trips these.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif
