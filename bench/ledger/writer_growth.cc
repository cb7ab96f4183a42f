// The SQLite ledger's writer and checkpointer as the gateway runs them, on a ledger that grows:
// covered rows (one API key's, under one budget lease, ids as the gateway makes them) appended
// to the ledger's queue and journal by a thread of its own at a steady rate, with no kick (the
// writer takes them at its lazy wake-up, ~700-900 rows a group commit at 40k rows a second);
// every REPORT rows one line of each thread's CPU per row (schedstat: the nanoseconds it ran),
// its system calls per 1,000 rows (/proc task io) and the files' sizes.
//   build/release/bench/bw_ledger_growth [ROWS=3000000] [RATE=40000] [REPORT=100000] [DB]
// RATE 0: as fast as the writer takes them; RATE -N: group commits of exactly N rows, one after
// the other (appended, then flushed: no clock involved, for callgrind). DB: the database to use
// (and keep; rows are added to what it holds); without it a temporary one, removed at the end.
// Columns: rows in the ledger at the end of the interval, wall seconds of the interval, group
// commits in it, rows per commit, then per thread (writer = bw-ledger, checkpoint = bw-checkpoint,
// loop = the appending thread) ns of CPU per row and read/write system calls per 1,000 rows,
// checkpoints in the interval, the database's and the WAL's size (MiB), and the share of the
// machine's CPU time the hypervisor took (steal) in the interval.
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "served_id.h"
#include "store/sqlite_ledger.h"

namespace {

using namespace bw;

constexpr std::int64_t kNowMs = 1'767'225'600'000;

struct ThreadUse {
  std::uint64_t cpu_ns = 0;
  std::uint64_t syscr = 0;
  std::uint64_t syscw = 0;
};

struct Delta {
  double cpu_ns;
  double syscr;
  double syscw;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return s;
}

std::uint64_t field(const std::string& text, const char* name) {
  const auto at = text.find(name);
  if (at == std::string::npos) return 0;
  return std::strtoull(text.c_str() + at + std::strlen(name), nullptr, 10);
}

// Per thread name, summed over the threads of that name.
std::map<std::string, ThreadUse> thread_use() {
  std::map<std::string, ThreadUse> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    const std::string dir = e.path().string();
    std::string name = slurp(dir + "/comm");
    while (!name.empty() && name.back() == '\n') name.pop_back();
    ThreadUse& u = out[name];
    u.cpu_ns += std::strtoull(slurp(dir + "/schedstat").c_str(), nullptr, 10);
    const std::string io = slurp(dir + "/io");
    u.syscr += field(io, "syscr: ");
    u.syscw += field(io, "syscw: ");
  }
  return out;
}

// The machine's CPU time so far (jiffies): all of it, and what the hypervisor took (steal).
struct MachineTime {
  double total = 0;
  double steal = 0;
};

MachineTime machine_time() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  in >> cpu;
  MachineTime t;
  for (int i = 0; i < 10; ++i) {
    double v = 0;
    if (!(in >> v)) break;
    if (i < 8) t.total += v;  // guest time is counted in user time already
    if (i == 7) t.steal = v;
  }
  return t;
}

double mib(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<double>(st.st_size) / (1 << 20) : 0.0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t total = argc > 1 ? std::atoll(argv[1]) : 3'000'000;
  const std::int64_t rate = argc > 2 ? std::atoll(argv[2]) : 40'000;
  const std::int64_t report = argc > 3 ? std::atoll(argv[3]) : 100'000;
  std::string dir;
  std::string path;
  if (argc > 4) {
    path = argv[4];
  } else {
    char tmpl[] = "/tmp/bw_ledger_growth_XXXXXX";
    if (!::mkdtemp(tmpl)) return 1;
    dir = tmpl;
    path = dir + "/ledger.db";
  }
  store::SqliteLedgerOptions o;
  o.path = path;
  o.synchronous_full = false;  // the gateway's default durability (process)
  o.journals = 1;              // one event loop, as in the isolated benchmark
  auto opened = store::SqliteLedger::open(o);
  if (!opened.ok()) {
    std::fprintf(stderr, "open: %s\n", opened.error().message.c_str());
    return 1;
  }
  auto& ledger = *opened;
  // A lease far larger than the run, as the gateway opens them (an open lease row); its id
  // 15 characters as the gateway's (kept inline by std::string).
  char lease_text[16];
  std::snprintf(lease_text, sizeof lease_text, "lease:%09d", static_cast<int>(::getpid()));
  const std::string lease_id = lease_text;
  cost::LedgerReservation lease{
      lease_id, "key_a", "acme", "", {"key:key_a/total", "global/monthly"}, cost::kMaxMicros / 4,
      kNowMs,   true};
  if (!ledger->append_reservation(std::move(lease), [](const Result<Ok>&) {})) return 1;
  ledger->flush();
  const auto party = std::make_shared<const cost::LedgerParty>(
      cost::LedgerParty{"key_a", "acme", {"key:key_a/total", "global/monthly"}});

  std::atomic<std::int64_t> appended{0};
  std::atomic<bool> stop{false};
  std::thread loop([&] {
    pthread_setname_np(pthread_self(), "bw-loop");
    // Ids start at the wall clock's millisecond, so that rows added to a kept database sort
    // after its rows, as the gateway's would.
    const std::int64_t ms0 = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
    const auto t0 = std::chrono::steady_clock::now();
    std::int64_t seq = 0;
    while (seq < total && !stop.load()) {
      const auto now = std::chrono::steady_clock::now();
      const std::int64_t ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(now - t0).count();
      std::int64_t due = std::min<std::int64_t>(total, (ms + 1) * rate / 1000);
      if (rate == 0) due = std::min<std::int64_t>(seq + 64, total);
      if (rate < 0) due = std::min<std::int64_t>(seq - rate, total);
      for (; seq < due; ++seq) {
        cost::LedgerCovered c;
        const std::string id = bench::served_request_id_at(seq, ms0 + ms);
        c.request_id = id;
        c.lease_id = lease_id;
        c.party = party;
        c.model = "gpt-4.1";
        c.reserved_micro = 11'100;
        c.actual_micro = 11'000;
        c.prompt_tokens = 10;
        c.completion_tokens = 10;
        c.created_unix_ms = ms0 + ms;
        c.settled_unix_ms = ms0 + ms;
        // As the gateway: journaled when its journal has room (nobody waits for it), else
        // queued with a wake-up (its answer waits for the commit).
        c.to_journal = ledger->journal_room_for(cost::LedgerCoveredText::of(c));
        const auto wake = c.to_journal ? cost::Ledger::Wake::kDeferred : cost::Ledger::Wake::kNow;
        while (!ledger->append_covered(
            std::move(c), [](const Result<Ok>&) {}, wake)) {
          std::this_thread::sleep_for(std::chrono::microseconds(200));  // queue full
        }
        appended.store(seq + 1, std::memory_order_relaxed);
      }
      if (rate > 0) std::this_thread::sleep_until(t0 + std::chrono::milliseconds(ms + 1));
      if (rate < 0) ledger->flush();  // one group commit of exactly -RATE rows
    }
  });

  std::printf("%9s %6s %6s %5s %8s %5s %5s %8s %5s %5s %7s %5s %4s %8s %6s %6s\n", "rows", "wall_s",
              "commit", "r/c", "writer", "rd/k", "wr/k", "checkpt", "rd/k", "wr/k", "loop", "n_ck",
              "jfull", "db_MiB", "wal", "steal");
  std::printf("%9s %6s %6s %5s %8s %5s %5s %8s %5s %5s %7s\n", "", "", "", "", "ns/row", "", "",
              "ns/row", "", "", "ns/row");
  auto before = thread_use();
  auto stats0 = ledger->stats();
  std::uint64_t checkpoints0 = ledger->checkpoints();
  auto t_before = std::chrono::steady_clock::now();
  MachineTime m_before = machine_time();
  std::int64_t committed_before = static_cast<std::int64_t>(stats0.records_committed);
  const std::int64_t base = committed_before;
  for (std::int64_t next = report; next <= total; next += report) {
    for (;;) {
      const auto s = ledger->stats();
      if (static_cast<std::int64_t>(s.records_committed) - base >= next) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    const auto now_use = thread_use();
    const auto s = ledger->stats();
    const auto t = std::chrono::steady_clock::now();
    const std::uint64_t checkpoints = ledger->checkpoints();
    const MachineTime m = machine_time();
    const double machine = m.total - m_before.total;
    const double rows =
        static_cast<double>(static_cast<std::int64_t>(s.records_committed) - committed_before);
    const auto d = [&](const char* name) {
      // A thread that ended (the appending thread at the end): nothing in the interval.
      if (!now_use.count(name)) return Delta{0, 0, 0};
      const ThreadUse a = before.count(name) ? before[name] : ThreadUse{};
      const ThreadUse b = now_use.at(name);
      return Delta{static_cast<double>(b.cpu_ns - a.cpu_ns), static_cast<double>(b.syscr - a.syscr),
                   static_cast<double>(b.syscw - a.syscw)};
    };
    const Delta w = d("bw-ledger");
    const Delta c = d("bw-checkpoint");
    const Delta l = d("bw-loop");
    const double commits = static_cast<double>(s.commits - stats0.commits);
    std::printf(
        "%9lld %6.2f %6.0f %5.0f %8.0f %5.1f %5.1f %8.0f %5.1f %5.1f %7.0f %5llu %4llu %8.1f "
        "%6.1f %5.1f%%\n",
        static_cast<long long>(s.records_committed),
        std::chrono::duration<double>(t - t_before).count(), commits,
        commits > 0 ? rows / commits : 0.0, w.cpu_ns / rows, w.syscr * 1e3 / rows,
        w.syscw * 1e3 / rows, c.cpu_ns / rows, c.syscr * 1e3 / rows, c.syscw * 1e3 / rows,
        l.cpu_ns / rows, static_cast<unsigned long long>(checkpoints - checkpoints0),
        static_cast<unsigned long long>(s.journal_full - stats0.journal_full), mib(path),
        mib(path + "-wal"), machine > 0 ? 100.0 * (m.steal - m_before.steal) / machine : 0.0);
    std::fflush(stdout);
    before = now_use;
    stats0 = s;
    checkpoints0 = checkpoints;
    t_before = t;
    m_before = m;
    committed_before = static_cast<std::int64_t>(s.records_committed);
  }
  stop.store(true);
  loop.join();
  ledger.reset();
  if (!dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  return 0;
}
