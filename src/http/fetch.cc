// The only file of bw_http that includes Boost.Beast (compile cost; see DESIGN.md).
#include "http/fetch.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <chrono>
#include <optional>

namespace bw::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;

Result<Url> parse_url(std::string_view url) {
  Url u;
  std::string_view rest;
  if (url.starts_with("http://")) {
    rest = url.substr(7);
  } else if (url.starts_with("https://")) {
    u.tls = true;
    rest = url.substr(8);
  } else {
    return make_error(400, "invalid_request_error", "invalid_url",
                      "URL must start with http:// or https://: " + std::string(url));
  }
  const auto slash = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, slash);
  if (slash != std::string_view::npos) {
    u.target = std::string(rest.substr(slash));
    if (u.target.front() == '?') u.target.insert(0, "/");
  }
  if (authority.find('@') != std::string_view::npos) {
    return make_error(400, "invalid_request_error", "invalid_url",
                      "credentials in URLs are not supported");
  }
  std::string_view port;
  if (authority.starts_with("[")) {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) {
      return make_error(400, "invalid_request_error", "invalid_url", "unterminated IPv6 host");
    }
    u.host = std::string(authority.substr(1, close - 1));
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') {
        return make_error(400, "invalid_request_error", "invalid_url", "bad authority");
      }
      port = authority.substr(close + 2);
    }
  } else {
    const auto colon = authority.rfind(':');
    u.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port = authority.substr(colon + 1);
  }
  if (u.host.empty()) {
    return make_error(400, "invalid_request_error", "invalid_url", "URL has no host");
  }
  for (const char c : port) {
    if (c < '0' || c > '9') {
      return make_error(400, "invalid_request_error", "invalid_url", "bad port in URL");
    }
  }
  u.port = port.empty() ? (u.tls ? "443" : "80") : std::string(port);
  return u;
}

std::string url_encode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const unsigned char c : s) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

namespace {

template <class Stream>
asio::awaitable<void> exchange(Stream& stream, const Url& u, const FetchRequest& req,
                               FetchResponse& out) {
  bhttp::request<bhttp::string_body> r;
  r.method(bhttp::string_to_verb(req.method));
  r.target(u.target);
  r.version(11);
  const bool default_port = u.port == (u.tls ? "443" : "80");
  const std::string host_header =
      (u.host.find(':') != std::string::npos ? "[" + u.host + "]" : u.host) +
      (default_port ? "" : ":" + u.port);
  r.set(bhttp::field::host, host_header);
  r.set(bhttp::field::user_agent, "bellwether");
  r.set(bhttp::field::connection, "close");
  for (const auto& [k, v] : req.headers) r.set(k, v);
  if (!req.body.empty() || req.method == "POST" || req.method == "PATCH" || req.method == "PUT") {
    r.body() = req.body;
    r.prepare_payload();
  }
  co_await bhttp::async_write(stream, r, asio::use_awaitable);

  beast::flat_buffer buf;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(req.max_body);
  co_await bhttp::async_read(stream, buf, parser, asio::use_awaitable);
  out.status = static_cast<int>(parser.get().result_int());
  out.body = std::move(parser.get().body());
}

}  // namespace

Result<FetchResponse> fetch(const FetchRequest& req) {
  auto url = parse_url(req.url);
  if (!url) return url.error();
  const Url u = *url;
  if (bhttp::string_to_verb(req.method) == bhttp::verb::unknown) {
    return make_error(400, "invalid_request_error", "invalid_method", "unknown HTTP method");
  }

  asio::ssl::context ssl_ctx(asio::ssl::context::tls_client);
  if (u.tls) {
    boost::system::error_code ec;
    ssl_ctx.set_verify_mode(asio::ssl::verify_peer, ec);
    if (!req.ca_file.empty()) {
      ssl_ctx.load_verify_file(req.ca_file, ec);
    } else {
      ssl_ctx.set_default_verify_paths(ec);
    }
    if (ec) {
      return make_error(502, "api_error", "tls_config",
                        "cannot load CA file " + req.ca_file + ": " + ec.message());
    }
  }

  FetchResponse response;
  std::optional<std::string> failure;
  bool done = false;
  const auto timeout = std::chrono::nanoseconds(req.timeout);
  // Declared last so it is destroyed first: an unfinished coroutine frame (after a timeout) is
  // torn down while everything it refers to is still alive.
  asio::io_context ioc;

  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        try {
          tcp::resolver resolver(ioc);
          const auto endpoints =
              co_await resolver.async_resolve(u.host, u.port, asio::use_awaitable);
          if (!u.tls) {
            beast::tcp_stream stream(ioc);
            stream.expires_after(timeout);
            co_await stream.async_connect(endpoints, asio::use_awaitable);
            co_await exchange(stream, u, req, response);
            boost::system::error_code ignored;
            stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
          } else {
            beast::ssl_stream<beast::tcp_stream> stream(ioc, ssl_ctx);
            boost::system::error_code addr_ec;
            asio::ip::make_address(u.host, addr_ec);
            // SNI must not carry an IP literal (RFC 6066); the certificate is still checked
            // against the IP SAN in that case.
            if (addr_ec && !SSL_set_tlsext_host_name(stream.native_handle(), u.host.c_str())) {
              throw boost::system::system_error(boost::system::error_code(
                  static_cast<int>(::ERR_get_error()), asio::error::get_ssl_category()));
            }
            stream.set_verify_callback(asio::ssl::host_name_verification(u.host));
            beast::get_lowest_layer(stream).expires_after(timeout);
            co_await beast::get_lowest_layer(stream).async_connect(endpoints, asio::use_awaitable);
            co_await stream.async_handshake(asio::ssl::stream_base::client, asio::use_awaitable);
            co_await exchange(stream, u, req, response);
            // The server closes (Connection: close); a missing close_notify is not our problem.
            boost::system::error_code ignored;
            beast::get_lowest_layer(stream).socket().shutdown(tcp::socket::shutdown_both, ignored);
          }
        } catch (const boost::system::system_error& e) {
          failure = e.code() == beast::error::timeout ? std::string("timeout") : e.what();
        } catch (const std::exception& e) {
          failure = e.what();
        }
        done = true;
      },
      asio::detached);
  // The resolver has no deadline of its own; bounding the whole run covers it.
  ioc.run_for(timeout + std::chrono::milliseconds(50));
  if (!done || (failure && *failure == "timeout")) {
    return make_error(504, "api_error", "timeout", req.method + " " + req.url + " timed out");
  }
  if (failure) {
    return make_error(502, "api_error", "upstream_error",
                      req.method + " " + req.url + " failed: " + *failure);
  }
  return response;
}

}  // namespace bw::http
