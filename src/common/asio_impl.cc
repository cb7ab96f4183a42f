// The one translation unit that compiles Boost.Asio and Boost.Beast (separate compilation), so
// that every other file including their headers compiles quickly.

// Asio's epoll reactor from the project's copy (why: its header), in place of Boost's: it
// carries Boost's include guard, so src.hpp skips Boost's own.
#ifdef BOOST_ASIO_DETAIL_IMPL_EPOLL_REACTOR_IPP
#error "Boost's epoll reactor was included before the project's copy"
#endif
#include <boost/asio/detail/concurrency_hint.hpp>  // which src.hpp has included before it

#include "epoll_reactor.ipp"

// Asio's scheduler from the project's copy (why: its header), in place of Boost's: it carries
// Boost's include guard, so src.hpp skips Boost's own.
#ifdef BOOST_ASIO_DETAIL_IMPL_SCHEDULER_IPP
#error "Boost's scheduler was included before the project's copy"
#endif
#include "scheduler.ipp"

#include <boost/asio/impl/src.hpp>
#include <boost/asio/ssl/impl/src.hpp>
#include <boost/beast/src.hpp>
