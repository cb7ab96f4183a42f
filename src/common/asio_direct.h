#pragma once
// bw::direct: a completion token for a socket operation awaited by a coroutine,
// `auto [ec, n] = co_await socket.async_read_some(buffer, bw::direct);`, that completes as
// `asio::as_tuple(asio::deferred)` does (the same awaitable operation, the same result tuple)
// but costs less per operation when the socket and the coroutine run on one io_context.
//
// Why: every operation keeps the "work" of its handler (Asio's handler_work): with a socket
// whose executor is an any_io_executor, that is two any_io_executor objects (48 bytes each) in
// the operation, built by asking the socket's executor for its type, copying the coroutine's
// executor and comparing the two through their function tables, then moved out of the
// operation and destroyed at completion: ~100 instructions and two cache lines of the
// operation per read or write, to learn each time that both are the io_context's own executor
// and nothing needs tracking. Here the operation's handler is a type of the project's own
// (DirectHandler), and its work (DirectWork) makes the same decision with the executors'
// targets and keeps only a flag when the answer is "run the handler directly"; otherwise it
// keeps what Asio keeps (both executors, tracked) and dispatches as Asio does. The coroutine's
// executor is read where its frame keeps it, not copied out (~60 instructions per operation).
//
// The completion goes through asio::deferred, as with as_tuple(deferred): the coroutine awaits
// the same deferred operation, only its handler is wrapped in DirectHandler, which packs the
// completion's arguments into one tuple as as_tuple does. A composed write (asio::async_write)
// over a DirectHandler has the same work (the write's own operations carry the write_op).
// Other composed operations (a TLS stream's) see a handler with the coroutine's executor and
// take Asio's usual path.
//
// Thread safety: as Asio's handler_work; nothing shared.
#include <sys/socket.h>
#include <sys/uio.h>

#include <array>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/as_tuple.hpp>  // and detail::as_tuple_signature
#include <boost/asio/associator.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/detail/handler_invoke_helpers.hpp>
#include <boost/asio/detail/handler_work.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/write.hpp>
#include <boost/version.hpp>
#include <cerrno>
#include <cstddef>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

#if BOOST_VERSION != 108100
#error "bw::direct specialises Boost 1.81's handler_work: check it against this version"
#endif

namespace bw {

struct DirectToken {
  constexpr DirectToken() = default;
};
inline constexpr DirectToken direct{};

template <typename Handler>
class DirectHandler {
 public:
  explicit DirectHandler(Handler h) : handler_(std::move(h)) {}

  template <typename... Args>
  void operator()(Args&&... args) {
    std::move(handler_)(std::make_tuple(std::forward<Args>(args)...));
  }

  Handler handler_;
};

namespace detail {
// Names the friend of a coroutine's entry frame that reads its executor (below).
struct PeekExecutor {};
}  // namespace detail

}  // namespace bw

namespace boost::asio::detail {

// The executor of a coroutine (an awaitable_thread, which an awaitable_async_op_handler is), read
// where its entry frame keeps it instead of copied out (awaitable_thread::get_executor returns a
// copy: an any_io_executor built and destroyed through its function tables, per operation). A
// specialisation of the class template that the entry frame befriends.
template <typename Executor>
class awaitable_async_op_handler<bw::detail::PeekExecutor(), Executor> {
 public:
  static const Executor& of(awaitable_thread<Executor>& thread) noexcept {
    return thread.entry_point()->u_.executor_;
  }
};

}  // namespace boost::asio::detail

namespace bw {

namespace detail {
// The executor of the coroutine that a handler resumes, when the handler is a coroutine's own
// (a DirectHandler around an awaited operation's handler); else nullptr.
template <typename Handler>
const boost::asio::any_io_executor* coroutine_executor(Handler&) noexcept {
  return nullptr;
}
template <typename Signature>
const boost::asio::any_io_executor* coroutine_executor(
    DirectHandler<
        boost::asio::detail::awaitable_async_op_handler<Signature, boost::asio::any_io_executor>>&
        h) noexcept {
  return &boost::asio::detail::awaitable_async_op_handler<
      PeekExecutor(), boost::asio::any_io_executor>::of(h.handler_);
}
}  // namespace detail

// The work of an operation whose handler is, or completes into, a DirectHandler, on an I/O
// object whose executor is an any_io_executor: Asio's handler_work decisions, with nothing kept
// in the common case (both executors are the same io_context's plain executor).
template <typename Handler>
class DirectWork {
 public:
  using Any = boost::asio::any_io_executor;
  using Native = boost::asio::io_context::executor_type;
  static_assert(std::is_same_v<typename boost::asio::associated_executor<Handler, Any>::type, Any>,
                "a DirectHandler completes on the coroutine's any_io_executor");

  DirectWork(Handler& handler, const Any& io_ex) noexcept {
    namespace execution = boost::asio::execution;
    const Native* io = io_ex.target<Native>();
    if (const Any* kept = detail::coroutine_executor(handler); kept != nullptr && io != nullptr) {
      // The common case, decided without a copy of the coroutine's executor.
      const Native* hx = kept->target<Native>();
      if (hx != nullptr && *hx == *io) return;
    }
    Any ex = boost::asio::get_associated_executor(handler, io_ex);
    if (io != nullptr) {
      // Asio: the I/O executor owns no work; the handler's owns work unless it equals it.
      const Native* hx = ex.target<Native>();
      if (hx != nullptr && *hx == *io) return;
      tracked_.emplace(Any(), boost::asio::prefer(ex, execution::outstanding_work.tracked));
    } else {
      tracked_.emplace(boost::asio::prefer(io_ex, execution::outstanding_work.tracked),
                       boost::asio::prefer(ex, execution::outstanding_work.tracked));
    }
  }
  DirectWork(DirectWork&&) noexcept = default;

  template <typename Function>
  void complete(Function& function, Handler& handler) {
    if (!tracked_) {
      // As Asio's: an I/O completion already runs on the io_context's thread.
      boost_asio_handler_invoke_helpers::invoke(function, handler);
    } else {
      tracked_->second.execute(std::move(function));
    }
  }

 private:
  // The I/O object's executor (only when it is not the io_context's own) and the handler's,
  // each keeping work outstanding, as Asio's two handler_work bases do.
  std::optional<std::pair<Any, Any>> tracked_;
};

// Drops the first `n` bytes of `buffers` (written ones become empty); whether any are left.
template <std::size_t N>
bool drop_written(std::array<boost::asio::const_buffer, N>& buffers, std::size_t n) {
  bool left = false;
  for (auto& b : buffers) {
    if (n >= b.size()) {
      n -= b.size();
      b = boost::asio::const_buffer();
    } else {
      b += n;
      n = 0;
      left = true;
    }
  }
  return left;
}

// A write of `buffers` tried at once on the stream socket `fd`, before an asynchronous write
// (bw::async_write_all) is started: one sendmsg that does not wait. An answer, a request or an
// event usually fits the socket's send buffer, and the asynchronous write makes the same call
// first (Asio tries a write before it waits for readiness), but only after the coroutine has
// suspended and its operation has been allocated, started in the reactor, queued as done,
// dequeued and completed into the resumed coroutine. Returns true when this call settles the
// write: every byte written (`written` of them), or the socket failed (`ec`, as the
// asynchronous write would report it). False when the socket took part of the bytes or none:
// they are dropped from `buffers` (counted in `written`), and the caller writes the rest
// asynchronously (whose first attempt then usually waits: the send buffer is full).
// The caller must have no other write pending on the socket.
template <std::size_t N>
bool write_now(int fd, std::array<boost::asio::const_buffer, N>& buffers,
               boost::system::error_code& ec, std::size_t& written) {
  std::array<iovec, N> iov;
  std::size_t count = 0, total = 0;
  for (const auto& b : buffers) {
    if (b.size() == 0) continue;
    iov[count].iov_base = const_cast<void*>(b.data());
    iov[count].iov_len = b.size();
    total += b.size();
    ++count;
  }
  written = 0;
  ec = {};
  if (total == 0) return true;
  msghdr msg{};
  msg.msg_iov = iov.data();
  msg.msg_iovlen = count;
  const ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return false;
    ec.assign(errno, boost::asio::error::get_system_category());
    return true;
  }
  written = static_cast<std::size_t>(n);
  return !drop_written(buffers, written);
}

// A write of every byte of `buffers` (as asio::async_write), for a stream socket and
// bw::direct: `auto [ec, n] = co_await bw::async_write_all(socket, buffers, bw::direct);`.
// Asio's write_op carries the buffers as consuming_buffers, a cancellation state of its own and
// a completion condition, ~110 instructions per step; a write of a request's answer is almost
// always one step that writes everything. Here the buffers are an array that a short write
// advances in place (written ones become empty), and the write goes on until every byte is
// written or the socket fails. The operation is not cancellable on its own: as before, its
// socket's cancel() or close() ends it (the deadlines do so).
template <typename Stream, std::size_t N, typename Handler>
class WriteAll {
 public:
  WriteAll(Stream& stream, const std::array<boost::asio::const_buffer, N>& buffers, Handler handler)
      : stream_(&stream), buffers_(buffers), handler_(std::move(handler)) {}

  void start() {
    const std::array<boost::asio::const_buffer, N> b = buffers_;
    stream_->async_write_some(b, std::move(*this));
  }

  void operator()(boost::system::error_code ec, std::size_t n) {
    written_ += n;
    if (!ec && n > 0 && drop_written(buffers_, n)) {
      start();
      return;
    }
    std::move(handler_)(ec, written_);
  }

 private:
  Stream* stream_;
  std::array<boost::asio::const_buffer, N> buffers_;
  std::size_t written_ = 0;

 public:
  Handler handler_;  // read by the associators
};

// The token is bw::direct, or the DirectHandler of an operation that was started with it.
template <typename Stream, std::size_t N, typename Token>
auto async_write_all(Stream& stream, const std::array<boost::asio::const_buffer, N>& buffers,
                     Token&& token) {
  return boost::asio::async_initiate<Token, void(boost::system::error_code, std::size_t)>(
      [](auto handler, Stream* s, const std::array<boost::asio::const_buffer, N>& b) {
        WriteAll<Stream, N, std::decay_t<decltype(handler)>>(*s, b, std::move(handler)).start();
      },
      token, &stream, buffers);
}

// The associators of a wrapper (a DirectHandler, a WriteAll): its executor, allocator and
// cancellation slot are those of the handler it wraps (its handler_).
template <template <typename, typename> class Associator, typename Wrapper, typename Handler,
          typename DefaultCandidate>
struct WrappedAssociator : Associator<Handler, DefaultCandidate> {
  static typename Associator<Handler, DefaultCandidate>::type get(const Wrapper& h) noexcept {
    return Associator<Handler, DefaultCandidate>::get(h.handler_);
  }
  static auto get(const Wrapper& h, const DefaultCandidate& c) noexcept
      -> decltype(Associator<Handler, DefaultCandidate>::get(h.handler_, c)) {
    return Associator<Handler, DefaultCandidate>::get(h.handler_, c);
  }
};

}  // namespace bw

namespace boost::asio {

template <template <typename, typename> class Associator, typename Stream, std::size_t N,
          typename Handler, typename DefaultCandidate>
struct associator<Associator, bw::WriteAll<Stream, N, Handler>, DefaultCandidate>
    : bw::WrappedAssociator<Associator, bw::WriteAll<Stream, N, Handler>, Handler,
                            DefaultCandidate> {};

template <typename... Signatures>
struct async_result<bw::DirectToken, Signatures...> {
  template <typename Initiation>
  struct init_wrapper {
    template <typename Handler, typename... Args>
    void operator()(Handler&& handler, Args&&... args) {
      std::move(initiation_)(
          bw::DirectHandler<std::decay_t<Handler>>(std::forward<Handler>(handler)),
          std::forward<Args>(args)...);
    }
    Initiation initiation_;
  };

  template <typename Initiation, typename RawToken, typename... Args>
  static auto initiate(Initiation&& initiation, RawToken&&, Args&&... args) {
    return async_result<deferred_t, typename detail::as_tuple_signature<Signatures>::type...>::
        initiate(init_wrapper<std::decay_t<Initiation>>{std::forward<Initiation>(initiation)},
                 deferred, std::forward<Args>(args)...);
  }
};

template <template <typename, typename> class Associator, typename Handler,
          typename DefaultCandidate>
struct associator<Associator, bw::DirectHandler<Handler>, DefaultCandidate>
    : bw::WrappedAssociator<Associator, bw::DirectHandler<Handler>, Handler, DefaultCandidate> {};

namespace detail {

template <typename Handler>
class handler_work<bw::DirectHandler<Handler>, any_io_executor, void>
    : public bw::DirectWork<bw::DirectHandler<Handler>> {
 public:
  using bw::DirectWork<bw::DirectHandler<Handler>>::DirectWork;
};

template <typename Stream, typename Buffers, typename Iterator, typename Condition,
          typename Handler>
class handler_work<write_op<Stream, Buffers, Iterator, Condition, bw::DirectHandler<Handler>>,
                   any_io_executor, void>
    : public bw::DirectWork<
          write_op<Stream, Buffers, Iterator, Condition, bw::DirectHandler<Handler>>> {
 public:
  using bw::DirectWork<
      write_op<Stream, Buffers, Iterator, Condition, bw::DirectHandler<Handler>>>::DirectWork;
};

template <typename Stream, std::size_t N, typename Handler>
class handler_work<bw::WriteAll<Stream, N, bw::DirectHandler<Handler>>, any_io_executor, void>
    : public bw::DirectWork<bw::WriteAll<Stream, N, bw::DirectHandler<Handler>>> {
 public:
  using bw::DirectWork<bw::WriteAll<Stream, N, bw::DirectHandler<Handler>>>::DirectWork;
};

}  // namespace detail
}  // namespace boost::asio
