#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <stdexcept>
#include <thread>

#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"
#include "core/thread_pool.h"
#include "core/uninit_vector.h"
#include "core/workspace.h"

namespace whale {
namespace {

TEST(Fp8E4M3, KnownValues) {
  // Values from the OCP FP8 spec (E4M3: bias 7, no infinities, S.1111.111 is NaN).
  EXPECT_EQ(fp8_e4m3_to_f32(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(fp8_e4m3_to_f32(0x80)));
  EXPECT_EQ(fp8_e4m3_to_f32(0x01), 0.001953125f);  // smallest subnormal 2^-9
  EXPECT_EQ(fp8_e4m3_to_f32(0x07), 0.013671875f);  // largest subnormal 7·2^-9
  EXPECT_EQ(fp8_e4m3_to_f32(0x08), 0.015625f);     // smallest normal 2^-6
  EXPECT_EQ(fp8_e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(fp8_e4m3_to_f32(0x3C), 1.5f);
  EXPECT_EQ(fp8_e4m3_to_f32(0x40), 2.0f);
  EXPECT_EQ(fp8_e4m3_to_f32(0x77), 240.0f);
  EXPECT_EQ(fp8_e4m3_to_f32(0x7E), 448.0f);  // max finite, no infinities
  EXPECT_EQ(fp8_e4m3_to_f32(0xFE), -448.0f);
  EXPECT_EQ(fp8_e4m3_to_f32(0xB8), -1.0f);
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(0x7F)));
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_f32(0xFF)));
  // 0x78 would be +inf in IEEE-style e4m3; in e4m3fn it is 256.
  EXPECT_EQ(fp8_e4m3_to_f32(0x78), 256.0f);
}

TEST(Fp8E4M3, TableIsMonotonicAndRoundTrips) {
  for (int b = 1; b < 0x7F; ++b) {
    EXPECT_LT(fp8_e4m3_to_f32(static_cast<uint8_t>(b - 1)),
              fp8_e4m3_to_f32(static_cast<uint8_t>(b)));
    EXPECT_EQ(f32_to_fp8_e4m3(fp8_e4m3_to_f32(static_cast<uint8_t>(b))), b);
    EXPECT_EQ(f32_to_fp8_e4m3(fp8_e4m3_to_f32(static_cast<uint8_t>(b | 0x80))), b | 0x80);
  }
  EXPECT_EQ(f32_to_fp8_e4m3(1000.0f), 0x7E);  // saturates
  EXPECT_EQ(f32_to_fp8_e4m3(-1000.0f), 0xFE);
}

TEST(E8M0, PowersOfTwo) {
  EXPECT_EQ(e8m0_to_f32(127), 1.0f);
  EXPECT_EQ(e8m0_to_f32(128), 2.0f);
  EXPECT_EQ(e8m0_to_f32(120), 1.0f / 128);
  EXPECT_EQ(e8m0_to_f32(0), std::ldexp(1.0f, -127));
  EXPECT_TRUE(std::isnan(e8m0_to_f32(0xFF)));
}

TEST(Bf16, ConversionsAndRounding) {
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xC000), -2.0f);
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
  EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(1.01171875f), 0x3F82);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(F16, Conversions) {
  EXPECT_EQ(f16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xC000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x7BFF), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7C00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7E00)));
  EXPECT_EQ(f32_to_f16(1.5f), 0x3E00);
}

TEST(DType, NamesRoundTrip) {
  for (const char* name : {"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F16",
                           "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2", "F8_E8M0"}) {
    const auto t = dtype_from_name(name);
    ASSERT_TRUE(t.has_value()) << name;
    EXPECT_EQ(dtype_name(*t), name);
  }
  EXPECT_FALSE(dtype_from_name("F4").has_value());
  EXPECT_EQ(dtype_size(DType::kBF16), 2);
  EXPECT_EQ(dtype_size(DType::kF8E4M3), 1);
}

TEST(TensorView, ContiguousStrides) {
  float data[24];
  const TensorView v = TensorView::contiguous(DType::kF32, data, {2, 3, 4});
  EXPECT_EQ(v.strides, (std::vector<int64_t>{12, 4, 1}));
  EXPECT_EQ(v.numel(), 24);
  EXPECT_EQ(v.nbytes(), 96);
  EXPECT_TRUE(v.is_contiguous());
  EXPECT_EQ(shape_to_string(v.shape), "[2, 3, 4]");
}

TEST(Error, CarriesFileFieldHint) {
  const Error e = make_error("must be an integer", "hidden_size", "config.json", "fix it");
  EXPECT_EQ(e.to_string(), "config.json: hidden_size: must be an integer (hint: fix it)");
  Result<int> r = e;
  EXPECT_FALSE(r.ok());
  Result<int> v = 3;
  EXPECT_EQ(*v, 3);
}

TEST(ThreadPool, CoversRangeOnceWithEveryThread) {
  ThreadPool pool(4);
  EXPECT_EQ(pool.size(), 4);
  for (int64_t n : {1, 3, 4, 17, 1000}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    pool.parallel_for(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
    });
    for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  }
  EXPECT_GE(available_cores(), 1);
  ThreadPool default_pool;
  EXPECT_EQ(default_pool.size(), available_cores());
}

TEST(ThreadPool, GrainAndExceptions) {
  ThreadPool pool(4);
  std::atomic<int> calls = 0;
  pool.parallel_for(
      10, [&](int64_t, int64_t) { calls++; }, /*grain=*/8);
  EXPECT_EQ(calls.load(), 1);  // 10 items at grain 8 make one chunk
  EXPECT_THROW(pool.parallel_for(100,
                                 [](int64_t b, int64_t) {
                                   if (b > 0) throw std::runtime_error("chunk failed");
                                 }),
               std::runtime_error);
  // The pool still works afterwards.
  std::atomic<int64_t> sum = 0;
  pool.parallel_for(100, [&](int64_t b, int64_t e) { sum += e - b; });
  EXPECT_EQ(sum.load(), 100);
}

// A balanced job runs every item once; when one thread is held up, the others take what is
// left of its share, and an exception still reaches the caller.
TEST(ThreadPool, BalancedJobsCoverEveryItemAndShareTheSlowThreadsWork) {
  ThreadPool pool(3);
  for (int64_t n : {1, 2, 3, 5, 24, 1000}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    pool.parallel_for_balanced(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
    });
    for (auto& h : hits) EXPECT_EQ(h.load(), 1) << n;
  }
  // Item 0 (the caller's first) waits until every other item has run: the other threads must
  // take the rest of the caller's share (items 1-9) as well as their own. The wait is bounded,
  // so a pool that does not share fails the test instead of hanging it. Whichever thread
  // holds item 0, the others finish every other item only if they share.
  constexpr int64_t kItems = 30;
  std::atomic<int> done = 0;
  std::atomic<bool> others_finished = false;
  pool.parallel_for_balanced(kItems, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (i == 0) {
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (done.load() < kItems - 1 && std::chrono::steady_clock::now() < until)
          std::this_thread::yield();
        others_finished = done.load() == kItems - 1;
      }
      done++;
    }
  });
  EXPECT_EQ(done.load(), kItems);
  EXPECT_TRUE(others_finished.load());
  EXPECT_THROW(pool.parallel_for_balanced(50,
                                          [](int64_t b, int64_t) {
                                            if (b == 7) throw std::runtime_error("item failed");
                                          }),
               std::runtime_error);
  std::atomic<int64_t> sum = 0;
  pool.parallel_for_balanced(100, [&](int64_t b, int64_t e) { sum += e - b; });
  EXPECT_EQ(sum.load(), 100);
}

// Tile loads from buffers 16 bytes off a cache line ran about 5× slower: every growth of an
// UninitVector must land on a 64-byte boundary, whatever the element type and size.
TEST(UninitVector, StorageStartsOnACacheLine) {
  UninitVector<uint8_t> bytes;
  UninitVector<float> floats;
  for (const size_t n : {size_t{1}, size_t{3}, size_t{100}, size_t{4097}, size_t{1} << 20}) {
    bytes.resize(n);
    floats.resize(n);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(bytes.data()) % 64, 0u) << n;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(floats.data()) % 64, 0u) << n;
  }
  UninitVector<uint32_t> copy(floats.size());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(copy.data()) % 64, 0u);
}

TEST(Workspace, TakesAlignedDisjointBuffersAndGivesThemBackInOrder) {
  Workspace ws;
  float* first = nullptr;
  {
    const Workspace::Scope pass(ws);
    const std::span<float> a = ws.take<float>(10);
    const std::span<int32_t> b = ws.take<int32_t>(3);
    first = a.data();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % 64, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 64, 0u);
    EXPECT_GE(reinterpret_cast<const char*>(b.data()),
              reinterpret_cast<const char*>(a.data() + 10));
    float* inner = nullptr;
    {
      const Workspace::Scope nested(ws);
      inner = ws.take<float>(5).data();
    }
    EXPECT_EQ(ws.take<float>(5).data(), inner);  // the nested scope's memory, given back
  }
  EXPECT_EQ(ws.take<float>(1).data(), first);
}

TEST(Workspace, AFullPassFitsOneBlockTheNextTime) {
  Workspace ws;
  auto pass = [&] {
    const Workspace::Scope scope(ws);
    std::vector<float*> got;
    for (int i = 0; i < 8; ++i) {
      const std::span<float> s = ws.take<float>(int64_t{1} << (15 + i % 3));  // 128-512 KiB
      std::fill(s.begin(), s.end(), float(i));  // every byte is ours to write
      got.push_back(s.data());
    }
    return got;
  };
  pass();
  const size_t held = ws.capacity();
  const std::vector<float*> second = pass(), third = pass();
  EXPECT_EQ(second, third);  // the same memory every time: nothing was allocated
  EXPECT_EQ(ws.capacity(), held);
  for (size_t i = 1; i < second.size(); ++i) EXPECT_LT(second[i - 1], second[i]);  // one block
}

TEST(Workspace, KeepsNoMoreThanItsRetainLimit) {
  Workspace ws(size_t{1} << 20);
  {
    const Workspace::Scope scope(ws);
    ws.take<float>(int64_t{1} << 19);  // 2 MiB
  }
  EXPECT_EQ(ws.capacity(), 0u);
  {
    const Workspace::Scope scope(ws);
    ws.take<float>(1000);
  }
  EXPECT_GT(ws.capacity(), 0u);
  EXPECT_LE(ws.capacity(), size_t{1} << 20);
}

}  // namespace
}  // namespace whale
