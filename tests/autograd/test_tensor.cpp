// Tensor and Shape: storage sharing, views, clone, alignment, pooling and error messages.
#include <gtest/gtest.h>

#include <cstdint>

#include "autograd/error.h"
#include "autograd/tensor.h"

using namespace autograd;

TEST(Shape, BasicsAndNegativeIndex) {
  Shape s{2, 3, 4};
  EXPECT_EQ(s.rank(), 3);
  EXPECT_EQ(s.numel(), 24);
  EXPECT_EQ(s[-1], 4);
  EXPECT_EQ(s.rows(), 6);
  EXPECT_EQ(s.str(), "[2, 3, 4]");
  EXPECT_EQ(Shape{}.numel(), 1);
  EXPECT_THROW(s[3], Error);
  EXPECT_THROW((Shape{1, 2, 3, 4, 5, 6}), Error);
}

TEST(Tensor, CopiesShareStorageCloneDoesNot) {
  Tensor a = Tensor::from(Shape{2, 2}, {1, 2, 3, 4});
  Tensor b = a;
  b[0] = 10;
  EXPECT_EQ(a[0], 10);
  Tensor c = a.clone();
  c[1] = 20;
  EXPECT_EQ(a[1], 2);
  EXPECT_NE(c.data(), a.data());
}

TEST(Tensor, AlignedTo64Bytes) {
  for (int64_t n : {1, 3, 17, 1000}) {
    Tensor t = Tensor::empty(Shape{n});
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 64, 0u) << n;
  }
}

TEST(Tensor, ViewsAreZeroCopy) {
  Tensor a = Tensor::from(Shape{3, 2}, {0, 1, 2, 3, 4, 5});
  Tensor v = a.view(Shape{2, 3});
  EXPECT_EQ(v.data(), a.data());
  EXPECT_EQ(v.shape(), (Shape{2, 3}));
  Tensor s = a.slice0(1, 3);
  EXPECT_EQ(s.data(), a.data() + 2);
  EXPECT_EQ(s.shape(), (Shape{2, 2}));
  s[0] = 42;
  EXPECT_EQ(a[2], 42);
  EXPECT_THROW(a.view(Shape{4, 2}), Error);
  EXPECT_THROW(a.slice0(2, 4), Error);
}

TEST(Tensor, PoolReusesFreedBuffers) {
  const Shape s{1234, 17};
  float* first;
  {
    Tensor t = Tensor::empty(s);
    first = t.data();
  }
  const size_t fresh = pool_stats().fresh_allocations;
  Tensor again = Tensor::empty(s);
  EXPECT_EQ(again.data(), first);
  EXPECT_EQ(pool_stats().fresh_allocations, fresh);
}

TEST(Tensor, ErrorNamesOpAndShapes) {
  try {
    Tensor::from(Shape{2, 3}, {1, 2});
    FAIL() << "expected throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Tensor::from"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("[2, 3]"), std::string::npos);
  }
}
