// A non-owning reference to a callable: what std::function would be for a callback that only
// lives for the call it is passed to, without the heap allocation std::function makes for a
// lambda whose captures do not fit its small buffer (most of ours). Written here because
// std::function_ref is C++26.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

namespace whale {

template <class Signature>
class FunctionRef;

template <class R, class... Args>
class FunctionRef<R(Args...)> {
 public:
  // Refers to f, which must outlive every call through this reference (a lambda passed as an
  // argument lives until the full expression ends).
  template <class F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef> &&
           std::is_invocable_r_v<R, F&, Args...>) FunctionRef(F&& f)
  noexcept  // NOLINT(google-explicit-constructor): used like std::function
      : object_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* object, Args... args) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(object))(std::forward<Args>(args)...);
        }) {}

  R operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  void* object_;
  R (*call_)(void*, Args...);
};

}  // namespace whale
