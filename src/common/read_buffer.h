#pragma once
// A stream socket's read buffer whose read, when it comes back with fewer bytes than the buffer
// holds, tells the reactor that the socket is empty: the next read on that socket waits for
// readiness instead of being tried at once. Without it Asio tries every read at once, and a
// read issued before the peer has sent anything (the client's next request on a keep-alive
// connection, an upstream's answer just after its request was written) is a failed system call
// (EAGAIN) before the wait; with it a connection costs one read per arrival, as in nginx.
//
// Safe only with the project's epoll reactor (src/common/epoll_reactor.ipp, compiled in place of
// Boost's): a short read can leave the peer's FIN unread with its edge already spent, and that
// reactor keeps such reads going while the peer's FIN, a hang-up, an error or urgent data has
// been reported for the socket. Reads into any other buffer type behave as in Boost (only an
// empty read, end of file or an error, makes the socket wait).
//
// Use: socket.async_read_some(bw::ReadBuffer(buffer.prepare(n)), token), on a TCP socket (a
// short datagram says nothing about what is queued: only stream sockets are marked). One
// buffer per read; a read into several buffers keeps Boost's behaviour.
//
// bw::LazyReadBuffer reads the same way into a buffer that its owner gives only when the read
// is performed (the socket has bytes), not when it is started: a connection that waits (for its
// client's next request, for an upstream's answer) holds no buffer, and the read takes the one
// its owner was given back last, still in the core's caches (common/buffer_stash.h's read
// blocks), instead of one taken when the wait began, which at a few hundred connections waiting
// on a core has long left them (the kernel then writes the bytes into cold lines, and the parser
// reads them cold).
#include <boost/asio/buffer.hpp>
#include <boost/asio/detail/reactive_socket_recv_op.hpp>
#include <boost/version.hpp>
#include <cstddef>
#include <type_traits>

#if BOOST_VERSION != 108100
#error "bw::ReadBuffer specialises Boost 1.81's receive operation: check it against this version"
#endif

namespace bw {

struct ReadBuffer : boost::asio::mutable_buffer {
  explicit ReadBuffer(boost::asio::mutable_buffer b) noexcept : boost::asio::mutable_buffer(b) {}
};

// A read into the buffer that `prepare(owner)` returns when the read is performed, on the
// thread that runs the socket's operations; `unused(owner)` is called when that read brought
// nothing (the socket had no bytes after all, end of file or an error), so that the owner can
// give the buffer back. The owner must outlive the read (a socket's owner that closes it before
// it goes: a closed socket's pending read is cancelled, never performed). Neither function may
// throw. Its own size (never read or written) is `size`, the most a read asks for: not zero,
// or Asio completes the read at once without reading.
struct LazyReadBuffer : boost::asio::mutable_buffer {
  using Prepare = boost::asio::mutable_buffer (*)(void* owner) noexcept;
  using Unused = void (*)(void* owner) noexcept;
  LazyReadBuffer(void* o, Prepare p, Unused u, std::size_t size) noexcept
      : boost::asio::mutable_buffer(nullptr, size), owner(o), prepare(p), unused(u) {}
  void* owner;
  Prepare prepare;
  Unused unused;
};

}  // namespace bw

namespace boost::asio::detail {

// Boost's receive operation (reactive_socket_recv_op_base, 1.81) for one ReadBuffer or
// LazyReadBuffer, with one difference in do_perform: a short read of a stream socket is "done
// and exhausted". A LazyReadBuffer's buffer is asked for just before the read.
template <class Buffer>
class bw_short_read_recv_op_base : public reactor_op {
 public:
  bw_short_read_recv_op_base(const boost::system::error_code& success_ec, socket_type socket,
                             socket_ops::state_type state, const Buffer& buffer,
                             socket_base::message_flags flags, func_type complete_func)
      : reactor_op(success_ec, &bw_short_read_recv_op_base::do_perform, complete_func),
        socket_(socket),
        state_(state),
        buffer_(buffer),
        flags_(flags) {}

  static status do_perform(reactor_op* base) {
    constexpr bool kLazy = std::is_same_v<Buffer, bw::LazyReadBuffer>;
    auto* o = static_cast<bw_short_read_recv_op_base*>(base);
    const bool stream = (o->state_ & socket_ops::stream_oriented) != 0;
    boost::asio::mutable_buffer b = o->buffer_;
    if constexpr (kLazy) b = o->buffer_.prepare(o->buffer_.owner);
    if (!socket_ops::non_blocking_recv1(o->socket_, b.data(), b.size(), o->flags_, stream, o->ec_,
                                        o->bytes_transferred_)) {
      if constexpr (kLazy) o->buffer_.unused(o->buffer_.owner);
      return not_done;  // EAGAIN: wait for readiness
    }
    BOOST_ASIO_HANDLER_REACTOR_OPERATION((*o, "non_blocking_recv", o->ec_, o->bytes_transferred_));
    if constexpr (kLazy) {
      if (o->bytes_transferred_ == 0) o->buffer_.unused(o->buffer_.owner);
    }
    // Boost: an empty read (end of file, an error) of a stream socket is exhausted. Here also a
    // short one, which emptied the socket; not a read with flags (a peek leaves the bytes).
    if (stream &&
        (o->bytes_transferred_ == 0 || (o->flags_ == 0 && o->bytes_transferred_ < b.size()))) {
      return done_and_exhausted;
    }
    return done;
  }

 private:
  socket_type socket_;
  socket_ops::state_type state_;
  Buffer buffer_;
  socket_base::message_flags flags_;
};

template <>
class reactive_socket_recv_op_base<bw::ReadBuffer>
    : public bw_short_read_recv_op_base<bw::ReadBuffer> {
 public:
  using bw_short_read_recv_op_base::bw_short_read_recv_op_base;
};

template <>
class reactive_socket_recv_op_base<bw::LazyReadBuffer>
    : public bw_short_read_recv_op_base<bw::LazyReadBuffer> {
 public:
  using bw_short_read_recv_op_base::bw_short_read_recv_op_base;
};

}  // namespace boost::asio::detail
