// Text table, JSON and self-contained HTML (inline SVG) reports of one or more runs.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include <boost/json.hpp>

#include "bench_tool.h"

namespace bw::bench {
namespace json = boost::json;

namespace {

double pct(std::int64_t part, std::int64_t whole) {
  return whole > 0 ? 100.0 * static_cast<double>(part) / static_cast<double>(whole) : 0.0;
}

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, v);
  return buf;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

struct Row {
  std::string label;
  std::vector<std::string> cells;
};

std::vector<Row> table_rows(const std::vector<RunSummary>& runs) {
  std::vector<Row> rows;
  auto add = [&](std::string label, auto cell) {
    Row r{std::move(label), {}};
    for (const auto& run : runs) r.cells.push_back(cell(run));
    rows.push_back(std::move(r));
  };
  add("requests sent", [](const RunSummary& r) { return std::to_string(r.sent); });
  add("client attempts per request",
      [](const RunSummary& r) { return std::to_string(r.client_attempts); });
  add("endpoints (round robin)", [](const RunSummary& r) { return std::to_string(r.targets); });
  add("P50 latency (ms)", [](const RunSummary& r) { return fmt("%.1f", r.p50_ms); });
  add("P95 latency (ms)", [](const RunSummary& r) { return fmt("%.1f", r.p95_ms); });
  add("P99 latency (ms)", [](const RunSummary& r) { return fmt("%.1f", r.p99_ms); });
  add("success rate", [](const RunSummary& r) { return fmt("%.2f%%", pct(r.ok, r.sent)); });
  add("429 rate", [](const RunSummary& r) { return fmt("%.2f%%", pct(r.rate_limited, r.sent)); });
  add("other error rate", [](const RunSummary& r) { return fmt("%.2f%%", pct(r.errors, r.sent)); });
  add("dropped by client (in-flight bound)",
      [](const RunSummary& r) { return std::to_string(r.dropped); });
  add("other errors by reason", [](const RunSummary& r) {
    std::string out;
    for (const auto& [reason, n] : r.errors_by_reason)
      out += (out.empty() ? "" : ", ") + reason + ": " + std::to_string(n);
    return out.empty() ? std::string("-") : out;
  });
  for (int p = 0; p < kPriorities; ++p) {
    add("success rate P" + std::to_string(p), [p](const RunSummary& r) {
      const auto& s = r.by_priority[static_cast<std::size_t>(p)];
      return fmt("%.2f%%", pct(s.ok, s.sent)) + " of " + std::to_string(s.sent);
    });
  }
  for (int p = 0; p < kPriorities; ++p) {
    add("refused P" + std::to_string(p) + " (429 / 503)", [p](const RunSummary& r) {
      const auto& s = r.by_priority[static_cast<std::size_t>(p)];
      return std::to_string(s.refused()) + " (" + fmt("%.1f%%", pct(s.refused(), s.sent)) +
             "): " + std::to_string(s.rate_limited) + " / " + std::to_string(s.unavailable);
    });
  }
  for (int p = 0; p < kPriorities; ++p) {
    add("5xx P" + std::to_string(p) + " / no answer", [p](const RunSummary& r) {
      const auto& s = r.by_priority[static_cast<std::size_t>(p)];
      return std::to_string(s.server_errors) + " / " + std::to_string(s.other_errors);
    });
  }
  for (int p = 0; p < kPriorities; ++p) {
    add("latency P" + std::to_string(p) + " p50/p95/p99 (ms)", [p](const RunSummary& r) {
      const auto& s = r.by_priority[static_cast<std::size_t>(p)];
      return fmt("%.0f", s.p50_ms) + " / " + fmt("%.0f", s.p95_ms) + " / " + fmt("%.0f", s.p99_ms);
    });
  }
  add("P0 p99 / unloaded P0 p99", [&runs](const RunSummary& r) {
    const auto ratio = p0_p99_ratio(r, runs);
    return ratio ? fmt("%.2fx", *ratio) : std::string("-");
  });
  add("provider: requests received", [](const RunSummary& r) {
    return r.provider_requests ? std::to_string(*r.provider_requests) : std::string("-");
  });
  add("provider: 429 sent", [](const RunSummary& r) {
    return r.provider_429 ? std::to_string(*r.provider_429) : std::string("-");
  });
  add("completion tokens/s", [](const RunSummary& r) { return fmt("%.1f", r.tokens_per_s); });
  add("spend (USD)", [](const RunSummary& r) {
    return fmt("%.4f", r.spend_usd) + (r.budget_usd ? " of cap " + fmt("%.4f", *r.budget_usd) : "");
  });
  add("duration (s)", [](const RunSummary& r) { return fmt("%.1f", r.duration_s); });
  return rows;
}

// A line chart as inline SVG. Series share the x axis (seconds) and y axis (auto-scaled).
struct Series {
  std::string name;
  std::string color;
  std::vector<double> y;  // one value per second; NaN = gap
  bool dashed = false;
};

std::string svg_chart(const std::string& title, const std::string& y_label,
                      const std::vector<Series>& series) {
  constexpr double kW = 760, kH = 260, kLeft = 60, kRight = 150, kTop = 30, kBottom = 40;
  std::size_t n = 0;
  double ymax = 0;
  for (const auto& s : series) {
    n = std::max(n, s.y.size());
    for (double v : s.y)
      if (std::isfinite(v)) ymax = std::max(ymax, v);
  }
  if (ymax <= 0) ymax = 1;
  ymax *= 1.05;
  const double plot_w = kW - kLeft - kRight, plot_h = kH - kTop - kBottom;
  const double xmax = n > 1 ? static_cast<double>(n - 1) : 1;
  auto X = [&](double i) { return kLeft + plot_w * i / xmax; };
  auto Y = [&](double v) { return kTop + plot_h * (1 - v / ymax); };
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kW << "\" height=\"" << kH
    << "\" viewBox=\"0 0 " << kW << ' ' << kH << "\" font-family=\"sans-serif\" font-size=\"11\">";
  o << "<text x=\"" << kLeft << "\" y=\"18\" font-size=\"14\" font-weight=\"bold\">"
    << html_escape(title) << "</text>";
  o << "<rect x=\"" << kLeft << "\" y=\"" << kTop << "\" width=\"" << plot_w << "\" height=\""
    << plot_h << "\" fill=\"none\" stroke=\"#999\"/>";
  for (int g = 0; g <= 4; ++g) {
    const double v = ymax * g / 4;
    o << "<line x1=\"" << kLeft << "\" x2=\"" << kLeft + plot_w << "\" y1=\"" << Y(v) << "\" y2=\""
      << Y(v) << "\" stroke=\"#eee\"/><text x=\"" << kLeft - 6 << "\" y=\"" << Y(v) + 4
      << "\" text-anchor=\"end\">" << fmt(v >= 100 ? "%.0f" : "%.1f", v) << "</text>";
  }
  for (int g = 0; g <= 5; ++g) {
    const double i = xmax * g / 5;
    o << "<text x=\"" << X(i) << "\" y=\"" << kTop + plot_h + 16 << "\" text-anchor=\"middle\">"
      << fmt("%.0f", i) << "</text>";
  }
  o << "<text x=\"" << kLeft + plot_w / 2 << "\" y=\"" << kH - 6
    << "\" text-anchor=\"middle\">time (s)</text>";
  o << "<text x=\"14\" y=\"" << kTop + plot_h / 2 << "\" transform=\"rotate(-90 14 "
    << kTop + plot_h / 2 << ")\" text-anchor=\"middle\">" << html_escape(y_label) << "</text>";
  int legend = 0;
  for (const auto& s : series) {
    std::string d;
    bool pen_up = true;
    for (std::size_t i = 0; i < s.y.size(); ++i) {
      if (!std::isfinite(s.y[i])) {
        pen_up = true;
        continue;
      }
      // Appended piecewise: GCC 12 reports a false -Wrestrict on `const char* + std::string`.
      d += pen_up ? 'M' : 'L';
      d += fmt("%.1f", X(static_cast<double>(i)));
      d += ',';
      d += fmt("%.1f", Y(s.y[i]));
      pen_up = false;
    }
    if (!d.empty())
      o << "<path d=\"" << d << "\" fill=\"none\" stroke=\"" << s.color << "\" stroke-width=\"1.5\""
        << (s.dashed ? " stroke-dasharray=\"5,3\"" : "") << "/>";
    const double ly = kTop + 12 + 16 * legend++;
    o << "<line x1=\"" << kW - kRight + 10 << "\" x2=\"" << kW - kRight + 30 << "\" y1=\"" << ly - 4
      << "\" y2=\"" << ly - 4 << "\" stroke=\"" << s.color << "\" stroke-width=\"2\""
      << (s.dashed ? " stroke-dasharray=\"5,3\"" : "") << "/><text x=\"" << kW - kRight + 35
      << "\" y=\"" << ly << "\">" << html_escape(s.name) << "</text>";
  }
  o << "</svg>";
  return o.str();
}

std::vector<double> column(const RunSummary& r, double (*get)(const SecondStats&)) {
  std::vector<double> v;
  v.reserve(r.series.size());
  for (const auto& s : r.series) v.push_back(get(s));
  return v;
}

}  // namespace

Outcome classify_outcome(bool ok, int status, bool rate_limited_kind) {
  if (ok) return Outcome::kOk;
  if (status == 429 || rate_limited_kind) return Outcome::kRateLimited;
  if (status == 503) return Outcome::kUnavailable;
  if (status >= 500 && status <= 599) return Outcome::kServerError;
  return Outcome::kOtherError;
}

RunTally::RunTally(std::string name) {
  summary_.name = std::move(name);
}

SecondStats& RunTally::at(double at_s) {
  const auto sec = static_cast<std::size_t>(std::max(0.0, at_s));
  if (series_.size() <= sec) {
    series_.resize(sec + 1);
    second_latencies_.resize(sec + 1);
    second_priority_latencies_.resize(sec + 1);
  }
  return series_[sec];
}

void RunTally::sent(double at_s, int priority) {
  ++at(at_s).sent;
  ++summary_.sent;
  ++summary_.by_priority[static_cast<std::size_t>(std::clamp(priority, 0, kPriorities - 1))].sent;
}

void RunTally::dropped(double at_s, int priority) {
  auto& s = at(at_s);
  ++s.dropped;
  ++s.errors;
  ++summary_.dropped;
  ++summary_.errors;
  ++summary_.by_priority[static_cast<std::size_t>(std::clamp(priority, 0, kPriorities - 1))]
        .other_errors;
}

void RunTally::completed(double at_s, int priority, Outcome outcome, double latency_ms,
                         const std::string& reason, std::int64_t prompt_tokens,
                         std::int64_t completion_tokens) {
  const auto p = static_cast<std::size_t>(std::clamp(priority, 0, kPriorities - 1));
  auto& s = at(at_s);
  const auto sec = static_cast<std::size_t>(std::max(0.0, at_s));
  auto& ps = summary_.by_priority[p];
  switch (outcome) {
    case Outcome::kOk:
      ++s.ok;
      ++s.ok_by_priority[p];
      ++summary_.ok;
      ++ps.ok;
      second_latencies_[sec].push_back(latency_ms);
      second_priority_latencies_[sec][p].push_back(latency_ms);
      all_latencies_.push_back(latency_ms);
      priority_latencies_[p].push_back(latency_ms);
      summary_.prompt_tokens += prompt_tokens;
      summary_.completion_tokens += completion_tokens;
      return;
    case Outcome::kRateLimited:
      ++s.rate_limited;
      ++s.refused_by_priority[p];
      ++summary_.rate_limited;
      ++ps.rate_limited;
      return;
    case Outcome::kUnavailable:
      ++s.refused_by_priority[p];
      ++ps.unavailable;
      break;
    case Outcome::kServerError:
      ++ps.server_errors;
      break;
    case Outcome::kOtherError:
      ++ps.other_errors;
      break;
  }
  ++s.errors;
  ++summary_.errors;
  ++summary_.errors_by_reason[reason.empty() ? std::string("error") : reason];
}

void RunTally::queue_depth(double at_s, double depth) {
  at(at_s).queue_depth = depth;
}

RunSummary RunTally::finish(double duration_s) const {
  RunSummary s = summary_;
  s.series = series_;
  for (std::size_t i = 0; i < s.series.size(); ++i) {
    const auto& lat = second_latencies_[i];
    s.series[i].p50_ms = percentile(lat, 50);
    s.series[i].p95_ms = percentile(lat, 95);
    s.series[i].p99_ms = percentile(lat, 99);
    for (std::size_t p = 0; p < kPriorities; ++p)
      s.series[i].p99_by_priority[p] = percentile(second_priority_latencies_[i][p], 99);
  }
  s.p50_ms = percentile(all_latencies_, 50);
  s.p95_ms = percentile(all_latencies_, 95);
  s.p99_ms = percentile(all_latencies_, 99);
  s.max_ms = percentile(all_latencies_, 100);
  for (std::size_t p = 0; p < kPriorities; ++p) {
    s.by_priority[p].p50_ms = percentile(priority_latencies_[p], 50);
    s.by_priority[p].p95_ms = percentile(priority_latencies_[p], 95);
    s.by_priority[p].p99_ms = percentile(priority_latencies_[p], 99);
  }
  s.duration_s = std::max(1e-3, duration_s);
  s.tokens_per_s = static_cast<double>(s.completion_tokens) / s.duration_s;
  return s;
}

std::optional<double> p0_p99_ratio(const RunSummary& run, const std::vector<RunSummary>& runs) {
  for (const auto& b : runs) {
    if (!b.baseline) continue;
    const double base = b.by_priority[0].p99_ms;
    if (base <= 0 || run.by_priority[0].ok == 0) return std::nullopt;
    return run.by_priority[0].p99_ms / base;
  }
  return std::nullopt;
}

std::string comparison_table(const std::vector<RunSummary>& runs) {
  const auto rows = table_rows(runs);
  std::size_t label_w = 6;
  for (const auto& r : rows) label_w = std::max(label_w, r.label.size());
  std::vector<std::size_t> widths;
  for (std::size_t c = 0; c < runs.size(); ++c) {
    std::size_t w = runs[c].name.size();
    for (const auto& r : rows) w = std::max(w, r.cells[c].size());
    widths.push_back(w);
  }
  std::ostringstream o;
  auto line = [&](const std::string& label, const std::vector<std::string>& cells) {
    o << label << std::string(label_w - label.size(), ' ');
    for (std::size_t c = 0; c < cells.size(); ++c)
      o << " | " << std::string(widths[c] - cells[c].size(), ' ') << cells[c];
    o << '\n';
  };
  std::vector<std::string> names;
  for (const auto& r : runs) names.push_back(r.name);
  line("metric", names);
  o << std::string(label_w, '-');
  for (auto w : widths) o << "-+-" << std::string(w, '-');
  o << '\n';
  for (const auto& r : rows) line(r.label, r.cells);
  return o.str();
}

std::string to_json(const std::vector<RunSummary>& runs, const std::string& profile_text) {
  json::object root;
  root["tool"] = "bellwether bench";
  root["profile"] = profile_text;
  json::array out_runs;
  for (const auto& r : runs) {
    json::object o;
    o["name"] = r.name;
    o["baseline"] = r.baseline;
    o["client_attempts"] = r.client_attempts;
    o["targets"] = r.targets;
    json::object s{{"duration_s", r.duration_s},
                   {"sent", r.sent},
                   {"ok", r.ok},
                   {"rate_limited", r.rate_limited},
                   {"errors", r.errors},
                   {"dropped", r.dropped},
                   {"p50_ms", r.p50_ms},
                   {"p95_ms", r.p95_ms},
                   {"p99_ms", r.p99_ms},
                   {"max_ms", r.max_ms},
                   {"success_rate", pct(r.ok, r.sent) / 100},
                   {"rate_limited_rate", pct(r.rate_limited, r.sent) / 100},
                   {"error_rate", pct(r.errors, r.sent) / 100},
                   {"prompt_tokens", r.prompt_tokens},
                   {"completion_tokens", r.completion_tokens},
                   {"tokens_per_s", r.tokens_per_s},
                   {"spend_usd", r.spend_usd}};
    s["budget_usd"] = r.budget_usd ? json::value(*r.budget_usd) : json::value(nullptr);
    json::object reasons;
    for (const auto& [reason, n] : r.errors_by_reason) reasons[reason] = n;
    s["errors_by_reason"] = std::move(reasons);
    s["provider_requests"] =
        r.provider_requests ? json::value(*r.provider_requests) : json::value(nullptr);
    s["provider_429"] = r.provider_429 ? json::value(*r.provider_429) : json::value(nullptr);
    const auto ratio = p0_p99_ratio(r, runs);
    s["p0_p99_over_unloaded"] = ratio ? json::value(*ratio) : json::value(nullptr);
    json::array prio;
    for (std::size_t p = 0; p < r.by_priority.size(); ++p)
      prio.push_back(
          json::object{{"priority", p},
                       {"sent", r.by_priority[p].sent},
                       {"ok", r.by_priority[p].ok},
                       {"success_rate", pct(r.by_priority[p].ok, r.by_priority[p].sent) / 100},
                       {"rate_limited", r.by_priority[p].rate_limited},
                       {"unavailable", r.by_priority[p].unavailable},
                       {"refused", r.by_priority[p].refused()},
                       {"server_errors", r.by_priority[p].server_errors},
                       {"other_errors", r.by_priority[p].other_errors},
                       {"p50_ms", r.by_priority[p].p50_ms},
                       {"p95_ms", r.by_priority[p].p95_ms},
                       {"p99_ms", r.by_priority[p].p99_ms}});
    s["by_priority"] = std::move(prio);
    o["summary"] = std::move(s);
    json::array series;
    for (std::size_t t = 0; t < r.series.size(); ++t) {
      const auto& x = r.series[t];
      json::object row{{"t", t},
                       {"sent", x.sent},
                       {"ok", x.ok},
                       {"rate_limited", x.rate_limited},
                       {"errors", x.errors},
                       {"dropped", x.dropped},
                       {"p50_ms", x.p50_ms},
                       {"p95_ms", x.p95_ms},
                       {"p99_ms", x.p99_ms}};
      row["queue_depth"] = x.queue_depth ? json::value(*x.queue_depth) : json::value(nullptr);
      json::array okp, refp, p99p;
      for (std::size_t p = 0; p < kPriorities; ++p) {
        okp.push_back(x.ok_by_priority[p]);
        refp.push_back(x.refused_by_priority[p]);
        p99p.push_back(x.p99_by_priority[p]);
      }
      row["ok_by_priority"] = std::move(okp);
      row["refused_by_priority"] = std::move(refp);
      row["p99_ms_by_priority"] = std::move(p99p);
      series.push_back(std::move(row));
    }
    o["series"] = std::move(series);
    out_runs.push_back(std::move(o));
  }
  root["runs"] = std::move(out_runs);
  return json::serialize(root);
}

std::string to_html(const std::vector<RunSummary>& runs, const std::string& profile_text) {
  static const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};
  static const char* kPriorityColors[] = {"#d62728", "#1f77b4", "#7f7f7f"};
  const auto nan = std::nan("");
  std::ostringstream o;
  o << "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Bellwether spike "
       "benchmark</title>"
       "<style>body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse}"
       "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}td:first-child,th:first-child"
       "{text-align:left}svg{display:block;margin:12px 0}</style></head><body>\n";
  o << "<h1>Bellwether spike benchmark</h1>\n<p>Profile (time_s:rate_per_min): <code>"
    << html_escape(profile_text)
    << "</code>. Open-loop load; latency is measured from each request's intended send time and "
       "covers successful requests (after the client's own retries, if any). Refusals are 429 and "
       "503 "
       "as the client finally got them; the provider's own 429s are counted by the "
       "simulator.</p>\n";
  o << "<table><tr><th>metric</th>";
  for (const auto& r : runs) o << "<th>" << html_escape(r.name) << "</th>";
  o << "</tr>\n";
  for (const auto& row : table_rows(runs)) {
    o << "<tr><td>" << html_escape(row.label) << "</td>";
    for (const auto& c : row.cells) o << "<td>" << html_escape(c) << "</td>";
    o << "</tr>\n";
  }
  o << "</table>\n";

  for (std::size_t i = 0; i < runs.size(); ++i) {
    const auto& r = runs[i];
    auto ok_or_gap = [&](double (*get)(const SecondStats&)) {
      std::vector<double> v;
      for (const auto& s : r.series) v.push_back(s.ok > 0 ? get(s) : nan);
      return v;
    };
    o << svg_chart("Latency percentiles over time: " + r.name, "latency (ms)",
                   {{"p50", "#2ca02c", ok_or_gap([](const SecondStats& s) { return s.p50_ms; })},
                    {"p95", "#ff7f0e", ok_or_gap([](const SecondStats& s) { return s.p95_ms; })},
                    {"p99", "#d62728", ok_or_gap([](const SecondStats& s) { return s.p99_ms; })}})
      << '\n';
    // Per priority: what the queue order buys P0 and what P2 pays for it.
    std::vector<Series> by_prio, refused;
    for (std::size_t p = 0; p < kPriorities; ++p) {
      std::vector<double> lat, ref;
      for (const auto& s : r.series) {
        lat.push_back(s.ok_by_priority[p] > 0 ? s.p99_by_priority[p] : nan);
        ref.push_back(static_cast<double>(s.refused_by_priority[p]));
      }
      by_prio.push_back({"P" + std::to_string(p) + " p99", kPriorityColors[p], lat});
      refused.push_back({"P" + std::to_string(p), kPriorityColors[p], ref});
    }
    o << svg_chart("p99 latency by priority over time: " + r.name, "latency (ms)", by_prio) << '\n';
    o << svg_chart("Refusals (429 + 503) by priority over time: " + r.name, "refused/s", refused)
      << '\n';
  }
  std::vector<Series> rate, r429, queue;
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const auto& r = runs[i];
    const std::string color = kColors[i % 6];
    if (i == 0)
      rate.push_back({"offered", "#777",
                      column(r, [](const SecondStats& s) { return double(s.sent); }), true});
    rate.push_back(
        {"ok " + r.name, color, column(r, [](const SecondStats& s) { return double(s.ok); })});
    r429.push_back(
        {r.name, color, column(r, [](const SecondStats& s) { return double(s.rate_limited); })});
    bool has_queue = false;
    std::vector<double> q;
    for (const auto& s : r.series) {
      q.push_back(s.queue_depth ? *s.queue_depth : nan);
      has_queue = has_queue || s.queue_depth.has_value();
    }
    if (has_queue) queue.push_back({r.name, color, q});
  }
  o << svg_chart("Request rate", "requests/s", rate) << '\n';
  o << svg_chart("HTTP 429 over time", "429/s", r429) << '\n';
  if (!queue.empty()) o << svg_chart("Gateway queue depth", "queued requests", queue) << '\n';
  o << "</body></html>\n";
  return o.str();
}

}  // namespace bw::bench
