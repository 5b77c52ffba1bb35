#include "formats/safetensors.h"

#include <gtest/gtest.h>

#include "ops/matrix.h"
#include "tests/test_util.h"

namespace whale {
namespace {

using test::safetensors_bytes;
using test::TempDir;
using test::write_file;

// Opens bytes written to a temp file; returns the error text or "" on success.
std::string open_error(const std::string& bytes) {
  TempDir dir;
  write_file(dir.file("m.safetensors"), bytes);
  auto f = SafetensorsFile::open(dir.file("m.safetensors"));
  return f.ok() ? "" : f.error().to_string();
}

TEST(Safetensors, ReadsTensorsInPlace) {
  TempDir dir;
  const float a[6] = {1, 2, 3, 4, 5, 6};
  const uint16_t b[2] = {0x3F80, 0x4000};
  ASSERT_TRUE(write_safetensors(dir.file("m.safetensors"),
                                {{"a", DType::kF32, {2, 3}, a}, {"b", DType::kBF16, {2}, b}},
                                {{"format", "pt"}})
                  .ok());
  auto f = SafetensorsFile::open(dir.file("m.safetensors"));
  ASSERT_TRUE(f.ok()) << f.error().to_string();
  const auto& t = (*f)->tensors();
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t.at("a").view.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t.at("a").view.as<float>()[5], 6.0f);
  EXPECT_EQ(t.at("b").view.dtype, DType::kBF16);
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
}

TEST(Safetensors, RejectsTruncatedFile) {
  EXPECT_NE(open_error("abc").find("too short"), std::string::npos);
  const std::string good = safetensors_bytes(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0'));
  EXPECT_EQ(open_error(good), "");
  const std::string cut = good.substr(0, good.size() - 3);  // data section lost 3 bytes
  EXPECT_NE(open_error(cut).find("outside the data section"), std::string::npos) << open_error(cut);
}

TEST(Safetensors, RejectsHeaderLengthPastEnd) {
  std::string bytes = safetensors_bytes("{}", "");
  bytes[0] = 100;  // claims a 100-byte header in a 10-byte file
  EXPECT_NE(open_error(bytes).find("runs past the end"), std::string::npos);
  bytes = safetensors_bytes("{}", "");
  bytes[7] = 0x7F;  // absurd length
  EXPECT_NE(open_error(bytes).find("exceeds the limit"), std::string::npos);
}

TEST(Safetensors, RejectsMalformedJson) {
  EXPECT_NE(open_error(safetensors_bytes("{\"a\": [", "")).find("not valid JSON"),
            std::string::npos);
  EXPECT_NE(open_error(safetensors_bytes("[1,2]", "")).find("does not start with"),
            std::string::npos);
  EXPECT_NE(open_error(
                safetensors_bytes(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", ""))
                .find("non-negative"),
            std::string::npos);
  EXPECT_NE(open_error(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1]}})", std::string(4, 0)))
                .find("data_offsets"),
            std::string::npos);
}

TEST(Safetensors, RejectsUnknownDtype) {
  const std::string e = open_error(safetensors_bytes(
      R"({"w":{"dtype":"Q4_K","shape":[4],"data_offsets":[0,4]}})", std::string(4, 0)));
  EXPECT_NE(e.find("w: unknown dtype \"Q4_K\""), std::string::npos) << e;
}

TEST(Safetensors, RejectsSizeMismatch) {
  const std::string e = open_error(safetensors_bytes(
      R"({"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,8]}})", std::string(8, 0)));
  EXPECT_NE(e.find("needs 6 bytes but data_offsets span 8"), std::string::npos) << e;
}

TEST(Safetensors, RejectsOutOfRangeAndOverlap) {
  std::string e = open_error(safetensors_bytes(
      R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}})", std::string(8, 0)));
  EXPECT_NE(e.find("outside the data section"), std::string::npos) << e;
  e = open_error(safetensors_bytes(
      R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
      std::string(8, 0)));
  EXPECT_NE(e.find("overlaps"), std::string::npos) << e;
  // Shape product overflow is an error, not a wrap-around.
  e = open_error(safetensors_bytes(
      R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})",
      std::string(4, 0)));
  EXPECT_NE(e.find("too large"), std::string::npos) << e;
}

TEST(Safetensors, RejectsLyingLayouts) {
  // Header must start with '{'.
  std::string e = open_error(safetensors_bytes(" {}", ""));
  EXPECT_NE(e.find("does not start with '{'"), std::string::npos) << e;
  // A tensor named twice.
  e = open_error(safetensors_bytes(
      R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
      std::string(8, 0)));
  EXPECT_NE(e.find("a: appears twice"), std::string::npos) << e;
  // A gap before a tensor, and bytes after the last one.
  e = open_error(safetensors_bytes(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
                                   std::string(8, 0)));
  EXPECT_NE(e.find("a: gap of 4 bytes"), std::string::npos) << e;
  e = open_error(safetensors_bytes(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})",
                                   std::string(100, 0)));
  EXPECT_NE(e.find("96 bytes after the last tensor"), std::string::npos) << e;
  // A zero dim must not hide an absurd one (strides would overflow).
  e = open_error(safetensors_bytes(
      R"({"a":{"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]}})", ""));
  EXPECT_NE(e.find("too large"), std::string::npos) << e;
}

TEST(Safetensors, UnalignedDataIsReadByValue) {
  // A header of odd length puts the data at an odd address; reads must not assume alignment.
  const uint16_t v[2] = {0x3F80, 0xC000};  // bf16 1.0, -2.0
  std::string data(reinterpret_cast<const char*>(v), 4);
  TempDir dir;
  std::string header = R"({"w":{"dtype":"BF16","shape":[1,2],"data_offsets":[0,4]}})";
  if (header.size() % 2 == 0) header += ' ';
  write_file(dir.file("m.safetensors"), safetensors_bytes(header, data));
  auto f = SafetensorsFile::open(dir.file("m.safetensors"));
  ASSERT_TRUE(f.ok()) << f.error().to_string();
  const StoredTensor& w = (*f)->tensors().at("w");
  EXPECT_NE(reinterpret_cast<uintptr_t>(w.view.data) % 2, 0u);
  ops::Matrix m;
  m.dtype = DType::kBF16, m.data = w.view.data, m.rows = 1, m.cols = 2;
  float row[2];
  m.dequantize_row(0, 0, 2, row);  // UBSan flags a misaligned 16-bit load here if there is one
  EXPECT_EQ(row[0], 1.0f);
  EXPECT_EQ(row[1], -2.0f);
}

TEST(Checkpoint, ShardedIndex) {
  TempDir dir;
  const float a[2] = {1, 2}, b[3] = {3, 4, 5};
  ASSERT_TRUE(
      write_safetensors(dir.file("model-00001-of-00002.safetensors"), {{"a", DType::kF32, {2}, a}})
          .ok());
  ASSERT_TRUE(
      write_safetensors(dir.file("model-00002-of-00002.safetensors"), {{"b", DType::kF32, {3}, b}})
          .ok());
  write_file(
      dir.file("model.safetensors.index.json"),
      R"({"metadata":{"total_size":20},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
  auto ckpt = Checkpoint::open_dir(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.error().to_string();
  ASSERT_NE(ckpt->find("b"), nullptr);
  EXPECT_EQ(ckpt->find("b")->view.as<float>()[2], 5.0f);
  EXPECT_EQ(ckpt->total_bytes(), 20u);
}

TEST(Checkpoint, IndexErrors) {
  TempDir dir;
  const float a[2] = {1, 2};
  ASSERT_TRUE(write_safetensors(dir.file("s1.safetensors"), {{"a", DType::kF32, {2}, a}}).ok());
  write_file(dir.file("model.safetensors.index.json"),
             R"({"weight_map":{"a":"s1.safetensors","zz":"s1.safetensors"}})");
  auto ckpt = Checkpoint::open_dir(dir.path());
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(ckpt.error().to_string().find("zz"), std::string::npos);

  write_file(dir.file("model.safetensors.index.json"),
             R"({"weight_map":{"a":"../s1.safetensors"}})");
  ckpt = Checkpoint::open_dir(dir.path());
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(ckpt.error().to_string().find("not a plain file name"), std::string::npos);

  write_file(dir.file("model.safetensors.index.json"),
             R"({"weight_map":{"a":"missing.safetensors"}})");
  ckpt = Checkpoint::open_dir(dir.path());
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(ckpt.error().to_string().find("missing.safetensors"), std::string::npos);

  for (const char* name :
       {"/etc/passwd", "s1.safetensors\\u0000x", "weights.bin", ".hidden.safetensors"}) {
    write_file(dir.file("model.safetensors.index.json"),
               std::string(R"({"weight_map":{"a":")") + name + "\"}}");
    ckpt = Checkpoint::open_dir(dir.path());
    ASSERT_FALSE(ckpt.ok()) << name;
    EXPECT_NE(ckpt.error().to_string().find("not a plain file name"), std::string::npos) << name;
  }

  write_file(dir.file("model.safetensors.index.json"), "{not json");
  ckpt = Checkpoint::open_dir(dir.path());
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(ckpt.error().to_string().find("model.safetensors.index.json: not valid JSON"),
            std::string::npos);

  TempDir empty;
  ckpt = Checkpoint::open_dir(empty.path());
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(ckpt.error().to_string().find("no .safetensors"), std::string::npos);
}

}  // namespace
}  // namespace whale
