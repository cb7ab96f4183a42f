#pragma once
// Boost.Asio completion-token adapters for Client: co_await client-side calls from your own
// io_context, e.g. `ChatResult r = co_await bellwether::async_chat(client, req,
// asio::use_awaitable);` The result is delivered through the token's associated executor (your
// strand/io_context), never on the Client's own I/O thread.
#include <memory>
#include <utility>

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>

#include "bellwether/client.h"

namespace bellwether {
namespace detail {

template <class Handler, class Value>
std::function<void(Value)> to_callback(Handler&& handler) {
  // std::function needs a copyable target; the handler may be move-only.
  auto state = std::make_shared<std::decay_t<Handler>>(std::forward<Handler>(handler));
  auto work = boost::asio::make_work_guard(boost::asio::get_associated_executor(*state));
  return [state, work](Value value) mutable {
    auto ex = work.get_executor();
    boost::asio::dispatch(
        ex, [state, value = std::move(value)]() mutable { std::move (*state)(std::move(value)); });
    work.reset();
  };
}

}  // namespace detail

template <class Token>
auto async_chat(Client& client, ChatRequest request, Token&& token) {
  return boost::asio::async_initiate<Token, void(ChatResult)>(
      [&client](auto handler, ChatRequest req) {
        client.chat_async(std::move(req),
                          detail::to_callback<decltype(handler), ChatResult>(std::move(handler)));
      },
      token, std::move(request));
}

template <class Token>
auto async_chat_stream(Client& client, ChatRequest request, ChunkCallback on_chunk, Token&& token) {
  return boost::asio::async_initiate<Token, void(ChatResult)>(
      [&client](auto handler, ChatRequest req, ChunkCallback cb) {
        client.chat_stream_async(
            std::move(req), std::move(cb),
            detail::to_callback<decltype(handler), ChatResult>(std::move(handler)));
      },
      token, std::move(request), std::move(on_chunk));
}

}  // namespace bellwether
