#pragma once
// run(): drives one coroutine on a test's io_context until it finishes and returns its value,
// rethrowing what it threw. Handlers of other work still pending stay queued.
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include <exception>
#include <optional>
#include <stdexcept>
#include <utility>

namespace bw::testing {

template <class T>
T run(boost::asio::io_context& ioc, boost::asio::awaitable<T> a) {
  std::optional<T> out;
  std::exception_ptr error;
  boost::asio::co_spawn(ioc, std::move(a), [&](std::exception_ptr e, T v) {
    if (e) {
      error = e;
    } else {
      out = std::move(v);
    }
  });
  ioc.restart();
  while (!out && !error && ioc.run_one() > 0) {
  }
  if (error) std::rethrow_exception(error);
  if (!out) throw std::logic_error("the coroutine did not finish: the io_context ran out of work");
  return std::move(*out);
}

inline void run(boost::asio::io_context& ioc, boost::asio::awaitable<void> a) {
  bool done = false;
  std::exception_ptr error;
  boost::asio::co_spawn(ioc, std::move(a), [&](std::exception_ptr e) {
    error = e;
    done = true;
  });
  ioc.restart();
  while (!done && ioc.run_one() > 0) {
  }
  if (error) std::rethrow_exception(error);
  if (!done) throw std::logic_error("the coroutine did not finish: the io_context ran out of work");
}

}  // namespace bw::testing
