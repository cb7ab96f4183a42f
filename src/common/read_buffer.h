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
#include <boost/asio/buffer.hpp>
#include <boost/asio/detail/reactive_socket_recv_op.hpp>
#include <boost/version.hpp>

#if BOOST_VERSION != 108100
#error "bw::ReadBuffer specialises Boost 1.81's receive operation: check it against this version"
#endif

namespace bw {

struct ReadBuffer : boost::asio::mutable_buffer {
  explicit ReadBuffer(boost::asio::mutable_buffer b) noexcept : boost::asio::mutable_buffer(b) {}
};

}  // namespace bw

namespace boost::asio::detail {

// Boost's receive operation (reactive_socket_recv_op_base, 1.81) for one ReadBuffer, with one
// difference in do_perform: a short read of a stream socket is "done and exhausted".
template <>
class reactive_socket_recv_op_base<bw::ReadBuffer> : public reactor_op {
 public:
  reactive_socket_recv_op_base(const boost::system::error_code& success_ec, socket_type socket,
                               socket_ops::state_type state, const bw::ReadBuffer& buffer,
                               socket_base::message_flags flags, func_type complete_func)
      : reactor_op(success_ec, &reactive_socket_recv_op_base::do_perform, complete_func),
        socket_(socket),
        state_(state),
        buffer_(buffer),
        flags_(flags) {}

  static status do_perform(reactor_op* base) {
    auto* o = static_cast<reactive_socket_recv_op_base*>(base);
    const bool stream = (o->state_ & socket_ops::stream_oriented) != 0;
    if (!socket_ops::non_blocking_recv1(o->socket_, o->buffer_.data(), o->buffer_.size(), o->flags_,
                                        stream, o->ec_, o->bytes_transferred_)) {
      return not_done;  // EAGAIN: wait for readiness
    }
    BOOST_ASIO_HANDLER_REACTOR_OPERATION((*o, "non_blocking_recv", o->ec_, o->bytes_transferred_));
    // Boost: an empty read (end of file, an error) of a stream socket is exhausted. Here also a
    // short one, which emptied the socket; not a read with flags (a peek leaves the bytes).
    if (stream && (o->bytes_transferred_ == 0 ||
                   (o->flags_ == 0 && o->bytes_transferred_ < o->buffer_.size()))) {
      return done_and_exhausted;
    }
    return done;
  }

 private:
  socket_type socket_;
  socket_ops::state_type state_;
  boost::asio::mutable_buffer buffer_;
  socket_base::message_flags flags_;
};

}  // namespace boost::asio::detail
