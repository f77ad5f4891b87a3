// Pseudo-terminal pairs held by the tree: a /dev/ptmx master and the /dev/pts/N slave descriptions
// of the same pair, paired at dump by the master's TIOCGPTN and the slave's device number, made
// again at restore as a new pair. Dump and restore side by side.
//
// Saved and set again exactly: termios2 (flags, line, control characters, input and output
// speeds), the window size, packet mode, the slave lock, exclusive mode of each side, the slave's
// owner and mode, each description's status flags; and the controlling terminal of a session of
// the tree with its foreground process group (the session leader takes the new slave with
// TIOCSCTTY before it makes its children, so that they inherit it as they did).
//
// The pair's number N: the restore asks /dev/ptmx for new pairs until it gets N (holding the
// lower free numbers meanwhile), so N is kept whenever it is free on this host; when it is not,
// the pair gets another number, said in a warning (the slave's path, ttyname() and readlink of
// its descriptors then name the new number).
//
// Output the slave's side wrote that the master has not read yet (a launcher forwarding its
// children's stdout, as mpirun does, between two reads) is saved and made readable again: it is
// read from the master and written back through the slave with output processing off, at the
// dump (so the job goes on unaware) and at restore.
//
// Refused by name: bytes not read by the slave (their order with the line discipline's state
// cannot be set again from outside), such output in packet mode, a line discipline other than N_TTY, locked termios,
// a master without its slave in the tree or a slave without its master, a master with several
// descriptions, the controlling terminal of a session whose leader is not in the tree.
#include <fcntl.h>
#include <poll.h>
#include <asm/termbits.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <set>

#include "core/fds/fd_kind.h"
#include "core/proc.h"
#include "core/util/error.h"

namespace crest::fds {
namespace {

using schema::FileKind;

constexpr unsigned kPtmxMajor = 5, kPtmxMinor = 2;

bool is_ptmx(dev_t rdev) { return major(rdev) == kPtmxMajor && minor(rdev) == kPtmxMinor; }
bool is_pts(dev_t rdev) { return major(rdev) >= 136 && major(rdev) <= 143; }
uint32_t pts_index(dev_t rdev) { return (major(rdev) - 136) * 256 + minor(rdev); }

std::string pts_path(uint32_t n) { return "/dev/pts/" + std::to_string(n); }

// A copy of descriptor `fd` of host process `pid`, through a pidfd of ours.
UniqueFd copy_of(pid_t pid, int fd) {
  UniqueFd pidfd = proc::open_pidfd(pid);
  if (!pidfd) throw_errno("pidfd_open of process " + std::to_string(pid), errno, Errc::kernel);
  UniqueFd copy = proc::copy_fd(pidfd.get(), fd);
  if (!copy)
    throw_errno("cannot take a copy of fd " + std::to_string(fd) + " of process " +
                    std::to_string(pid),
                errno, Errc::kernel);
  return copy;
}

int int_ioctl(int fd, unsigned long req, const std::string& what) {
  int v = 0;
  if (::ioctl(fd, req, &v) != 0) throw_errno(what, errno, Errc::kernel);
  return v;
}

struct PairSeen {
  std::vector<int64_t> masters, slaves;
  std::pair<pid_t, int> master_at{0, -1}, slave_at{0, -1};
};

// Where a description (files row) is held: one (host pid, fd).
std::pair<pid_t, int> holder(const DumpContext& ctx, const schema::FileRecord& f) {
  auto it = ctx.descriptions.find({f.dev, f.ino});
  if (it != ctx.descriptions.end())
    for (auto& [id, pid, fd] : it->second)
      if (id == f.id) return {pid, fd};
  return {0, -1};
}

// Sets the pair's termios (through the master) with output processing off or back on.
void set_opost(int master, const struct termios2& t, bool on, const std::string& what) {
  struct termios2 raw = t;
  if (!on) raw.c_oflag &= ~static_cast<tcflag_t>(OPOST);
  if (::ioctl(master, TCSETS2, &raw) != 0)
    throw_errno("TCSETS2 of " + what + (on ? " (its settings back)" : " (output processing off)"),
                errno, Errc::kernel);
}

// Writes bytes the master is to read: through the slave with output processing off, so that
// they arrive exactly as they were (they were processed when first written).
void put_output(int master, int slave, const struct termios2& t, const std::vector<uint8_t>& bytes,
                const std::string& what) {
  set_opost(master, t, false, what);
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(slave, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      set_opost(master, t, true, what);
      throw_errno("cannot put back the output not read from the master of " + what, err, Errc::kernel);
    }
    done += static_cast<size_t>(n);
  }
  set_opost(master, t, true, what);
  // The bytes reach the master's side through the kernel's flip buffer, a moment later.
  int now = 0;
  for (int i = 0; i < 400; ++i) {
    if (::ioctl(master, TIOCINQ, &now) != 0) throw_errno("TIOCINQ of " + what, errno, Errc::kernel);
    if (static_cast<size_t>(now) >= bytes.size()) return;
    ::usleep(5000);
  }
  fail(Errc::kernel, what + ": " + std::to_string(bytes.size()) + " bytes put back for the master, " +
                           std::to_string(now) + " readable");
}

// The output the slave's side wrote that the master has not read (mpirun's forwarding of a
// rank's stdout between two reads): read from the master (the tree is frozen, nothing else
// reads it) and put back at once, as it was, so the job goes on unaware.
void save_output(int master, int slave, const struct termios2& t, size_t count,
                 const std::string& what, std::vector<uint8_t>& out) {
  out.resize(count);
  size_t got = 0;
  while (got < count) {
    struct pollfd pfd = {master, POLLIN, 0};
    if (::poll(&pfd, 1, 0) != 1 || !(pfd.revents & POLLIN)) break;
    ssize_t n = ::read(master, out.data() + got, count - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  out.resize(got);
  if (got > 0) put_output(master, slave, t, out, what);
  if (got != count)
    fail(Errc::kernel, what + ": " + std::to_string(count) + " bytes unread on the master, " +
                           std::to_string(got) + " could be read (put back)");
}

// Reads one pair's state through copies of its master and a slave, or refuses naming why.
void dump_pair(DumpContext& ctx, uint32_t n, const PairSeen& seen, schema::PtyRecord& rec) {
  const std::string what = "the pseudo-terminal " + pts_path(n);
  UniqueFd master = copy_of(seen.master_at.first, seen.master_at.second);
  UniqueFd slave = copy_of(seen.slave_at.first, seen.slave_at.second);
  rec.index = n;

  struct termios2 t {};
  if (::ioctl(master.get(), TCGETS2, &t) != 0) throw_errno("TCGETS2 of " + what, errno, Errc::kernel);
  rec.iflag = t.c_iflag, rec.oflag = t.c_oflag, rec.cflag = t.c_cflag, rec.lflag = t.c_lflag;
  rec.line = t.c_line;
  rec.cc.assign(t.c_cc, t.c_cc + NCCS);
  rec.ispeed = t.c_ispeed, rec.ospeed = t.c_ospeed;

  struct winsize ws {};
  if (::ioctl(master.get(), TIOCGWINSZ, &ws) != 0)
    throw_errno("TIOCGWINSZ of " + what, errno, Errc::kernel);
  rec.rows = ws.ws_row, rec.cols = ws.ws_col, rec.xpixel = ws.ws_xpixel, rec.ypixel = ws.ws_ypixel;
  rec.packet = static_cast<uint32_t>(int_ioctl(master.get(), TIOCGPKT, "TIOCGPKT of " + what));
  rec.locked = static_cast<uint32_t>(int_ioctl(master.get(), TIOCGPTLCK, "TIOCGPTLCK of " + what));
  rec.master_excl = static_cast<uint32_t>(int_ioctl(master.get(), TIOCGEXCL, "TIOCGEXCL of " + what));
  rec.slave_excl = static_cast<uint32_t>(int_ioctl(slave.get(), TIOCGEXCL, "TIOCGEXCL of " + what));

  for (int fd : {master.get(), slave.get()}) {
    int ldisc = int_ioctl(fd, TIOCGETD, "TIOCGETD of " + what);
    if (ldisc != 0 /* N_TTY */)
      ctx.refuse(what + " uses line discipline " + std::to_string(ldisc) +
                 "; only the default one (N_TTY) is supported");
  }
  struct termios locked {};
  if (::ioctl(master.get(), TIOCGLCKTRMIOS, &locked) == 0) {
    static const struct termios none {};
    if (std::memcmp(&locked, &none, sizeof locked) != 0)
      ctx.refuse(what + " has locked termios settings (TIOCSLCKTRMIOS); not supported");
  }

  // Bytes not read yet. The slave's TIOCINQ counts whole lines only in canonical mode: a line
  // being typed shows with EXTPROC set, which is set for that look and taken off again (both
  // are no-ops while nothing is buffered; packet mode would report them to the master, so it is
  // not done then).
  int to_master = int_ioctl(master.get(), TIOCINQ, "TIOCINQ of the master of " + what);
  int to_slave = int_ioctl(slave.get(), TIOCINQ, "TIOCINQ of " + what);
  int out_master = int_ioctl(master.get(), TIOCOUTQ, "TIOCOUTQ of the master of " + what);
  int out_slave = int_ioctl(slave.get(), TIOCOUTQ, "TIOCOUTQ of " + what);
  bool partial_unknown = false;
  if (to_slave == 0 && (t.c_lflag & ICANON) && !(t.c_lflag & EXTPROC)) {
    if (rec.packet) {
      partial_unknown = true;
    } else {
      struct termios2 look = t;
      look.c_lflag |= EXTPROC;
      if (::ioctl(master.get(), TCSETS2, &look) != 0)
        throw_errno("TCSETS2 of " + what, errno, Errc::kernel);
      to_slave = int_ioctl(slave.get(), TIOCINQ, "TIOCINQ of " + what);
      if (::ioctl(master.get(), TCSETS2, &t) != 0)
        throw_errno("TCSETS2 of " + what + " (its settings back)", errno, Errc::kernel);
      if (to_slave)
        ctx.refuse(std::to_string(to_slave) + " bytes unread on " + what + ": a line being typed "
                   "in canonical mode (looking made it readable as it stands)");
      to_slave = 0;
    }
  }
  if (to_slave)
    ctx.refuse(std::to_string(to_slave) + " bytes unread on " + what +
               " (written to the master, not read from the slave)");
  if (to_master && rec.packet)
    ctx.refuse(std::to_string(to_master) + " bytes unread on the master of " + what +
               " (written to the slave, not read from the master) in packet mode; not supported");
  else if (to_master)
    save_output(master.get(), slave.get(), t, static_cast<size_t>(to_master), what, rec.to_master);
  if (out_master || out_slave)
    ctx.refuse(std::to_string(out_master + out_slave) + " bytes waiting to be written on " + what);
  if (rec.packet) {
    struct pollfd pfd = {master.get(), POLLPRI, 0};
    if (::poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLPRI))
      ctx.refuse(what + ": a packet-mode status byte waits to be read from the master; not "
                 "supported");
  }
  {
    // Output stopped by ^S (IXON) or by TCOOFF leaves the slave without room to write.
    struct pollfd pfd = {slave.get(), POLLOUT, 0};
    if (::poll(&pfd, 1, 0) != 1 || !(pfd.revents & POLLOUT))
      ctx.refuse("the output of " + what + " is stopped (^S or TCOOFF) or full; not supported");
  }
  if (partial_unknown)
    ctx.refuse(what + " is in packet mode and canonical mode: a line being typed cannot be "
               "seen without the master noticing; not supported");

  // Whose controlling terminal it is: a session of the tree, with its foreground group.
  pid_t sid = 0, pgrp = 0;
  if (::ioctl(master.get(), TIOCGSID, &sid) == 0 && sid > 0) {
    rec.sid = ctx.recorded(sid);
    if (rec.sid == 0) {
      ctx.refuse(what + " is the controlling terminal of session " + std::to_string(sid) +
                 ", whose leader is not in the tree; not supported");
      return;
    }
    if (::ioctl(master.get(), TIOCGPGRP, &pgrp) != 0)
      throw_errno("TIOCGPGRP of " + what, errno, Errc::kernel);
    rec.pgrp = ctx.recorded(pgrp);
    if (pgrp > 0 && rec.pgrp == 0)
      ctx.refuse(what + ": its foreground process group " + std::to_string(pgrp) +
                 " has no process in the tree; not supported");
  }
}

// A tty_nr of /proc/PID/stat as a device number.
dev_t tty_dev(uint64_t nr) {
  return makedev(static_cast<unsigned>((nr >> 8) & 0xfff),
                 static_cast<unsigned>((nr & 0xff) | ((nr >> 12) & 0xfff00)));
}

std::string tty_name(uint64_t nr) {
  dev_t d = tty_dev(nr);
  if (is_pts(d)) return pts_path(pts_index(d));
  return "the terminal " + std::to_string(major(d)) + ":" + std::to_string(minor(d));
}

void pair_ptys(DumpContext& ctx) {
  std::map<uint32_t, PairSeen> pairs;
  for (auto& f : ctx.meta.files) {
    auto kind = static_cast<FileKind>(f.kind);
    // A slave of a pair of the tree on the root's stdio is the pair's, not the launcher's.
    if (kind == FileKind::inherited && S_ISCHR(f.mode) && is_pts(static_cast<dev_t>(f.rdev))) {
      bool ours = false;
      for (auto& g : ctx.meta.files)
        if (static_cast<FileKind>(g.kind) == FileKind::pty_master &&
            g.kind_flags == pts_index(static_cast<dev_t>(f.rdev)))
          ours = true;
      if (ours) {
        f.kind = static_cast<uint32_t>(FileKind::pty_slave);
        f.inherited_fd = -1;
        kind = FileKind::pty_slave;
      }
    }
    if (kind == FileKind::pty_master) {
      auto& p = pairs[f.kind_flags];
      p.masters.push_back(f.id);
      if (p.master_at.second < 0) p.master_at = holder(ctx, f);
    } else if (kind == FileKind::pty_slave) {
      auto& p = pairs[pts_index(static_cast<dev_t>(f.rdev))];
      p.slaves.push_back(f.id);
      if (p.slave_at.second < 0) p.slave_at = holder(ctx, f);
    }
  }
  for (auto& [n, seen] : pairs) {
    const std::string what = "the pseudo-terminal " + pts_path(n);
    if (seen.masters.empty()) {
      ctx.refuse(what + " is open in the tree but its master is not; a terminal from outside "
                 "the tree is supported only on the root's stdio (with --shell-job for a "
                 "controlling terminal)");
      continue;
    }
    if (seen.slaves.empty()) {
      ctx.refuse("the master of " + what + " is open in the tree but no slave of it is; not "
                 "supported");
      continue;
    }
    if (seen.masters.size() > 1) {
      ctx.refuse("the master of " + what + " has " + std::to_string(seen.masters.size()) +
                 " open file descriptions in the tree; not supported");
      continue;
    }
    schema::PtyRecord rec;
    rec.id = static_cast<int64_t>(ctx.meta.ptys.size());
    try {
      dump_pair(ctx, n, seen, rec);
    } catch (const Error& e) {
      ctx.refuse(what + ": " + e.what());
      continue;
    }
    for (int64_t id : seen.masters) ctx.meta.files[static_cast<size_t>(id)].pty_id = rec.id;
    for (int64_t id : seen.slaves) ctx.meta.files[static_cast<size_t>(id)].pty_id = rec.id;
    ctx.meta.ptys.push_back(std::move(rec));
  }

  // Controlling terminals of the processes: a pair of the tree (its session recorded above), or
  // a terminal outside the tree, which only --shell-job takes (the job is given the restorer's).
  for (auto& p : ctx.meta.processes) {
    // Every live process of a session whose terminal is a pair of the tree has it too (at
    // restore they inherit it from their leader); one that lost it is not made again.
    for (auto& r : ctx.meta.ptys)
      if (r.sid != 0 && r.sid == p.sid && !(p.flags & schema::kProcessZombie) &&
          (p.tty == 0 || !is_pts(tty_dev(p.tty)) || pts_index(tty_dev(p.tty)) != r.index))
        ctx.refuse("process " + std::to_string(p.pid) + " is in session " +
                   std::to_string(p.sid) + " but does not have its controlling terminal " +
                   pts_path(r.index) + "; not supported");
    if (p.tty == 0) continue;
    const dev_t d = tty_dev(p.tty);
    const schema::PtyRecord* pair = nullptr;
    if (is_pts(d))
      for (auto& r : ctx.meta.ptys)
        if (r.index == pts_index(d)) pair = &r;
    const std::string who = "process " + std::to_string(p.pid);
    if (pair) {
      if (pair->sid != p.sid)
        ctx.refuse(who + ": its controlling terminal " + tty_name(p.tty) + " is not its "
                   "session's; not supported");
      p.tty = 0, p.tty_fg = 0;
      continue;
    }
    bool leader_in_tree = false;
    for (auto& q : ctx.meta.processes)
      if (q.pid == p.sid) leader_in_tree = true;
    if (leader_in_tree) {
      ctx.refuse(who + ": its session's controlling terminal " + tty_name(p.tty) + " is outside "
                 "the tree, but the session's leader is in it; not supported");
    } else if (!ctx.shell_job) {
      ctx.refuse(who + " has the controlling terminal " + tty_name(p.tty) + " of a session "
                 "outside the tree (a shell's job): dump with --shell-job to restore it on the "
                 "terminal crest restore runs on");
    }
  }
}

class PtyKind : public FdKind {
 public:
  const char* name() const override { return "pseudo-terminal"; }
  bool claims(const FdProbe& p) const override {
    return S_ISCHR(p.st.st_mode) && (is_ptmx(p.st.st_rdev) || is_pts(p.st.st_rdev));
  }
  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    if (is_ptmx(probe.st.st_rdev)) {
      UniqueFd copy = proc::copy_fd(probe.pidfd, probe.fd);
      unsigned n = 0;
      if (!copy || ::ioctl(copy.get(), TIOCGPTN, &n) != 0) {
        ctx.refuse(probe.where + " (" + probe.link + "): TIOCGPTN fails: " + std::strerror(errno));
        return false;
      }
      rec.kind = static_cast<uint32_t>(FileKind::pty_master);
      rec.kind_flags = n;  // the pair's number, until pair_ptys links the row to its pair
      // The pair must be the one /dev/pts shows here (not another devpts instance).
      struct stat here {};
      if (::stat(pts_path(n).c_str(), &here) != 0 || !S_ISCHR(here.st_mode) ||
          pts_index(here.st_rdev) != n) {
        ctx.refuse(probe.where + ": the master of pseudo-terminal " + std::to_string(n) +
                   " of a devpts instance crest does not see at /dev/pts; not supported");
        return false;
      }
      return true;
    }
    struct stat here {};
    const uint32_t n = pts_index(probe.st.st_rdev);
    if (::stat(pts_path(n).c_str(), &here) != 0 || here.st_dev != probe.st.st_dev ||
        here.st_rdev != probe.st.st_rdev) {
      ctx.refuse(probe.where + " is " + probe.link + ", a pseudo-terminal of a devpts instance "
                 "crest does not see at /dev/pts; not supported");
      return false;
    }
    rec.kind = static_cast<uint32_t>(FileKind::pty_slave);
    return true;
  }
  void finish_dump(DumpContext& ctx) const override { pair_ptys(ctx); }
  void open(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& rows) const override;
  std::vector<std::string> restored() const override {
    return {"master and slave descriptions of each pair, and which is which",
            "termios2: flags, line, control characters, input and output speeds",
            "window size", "packet mode", "slave lock", "exclusive mode of each side",
            "slave owner and mode", "status flags",
            "controlling terminal of a session of the tree and its foreground process group",
            "the pair's number when it is free here (else a new one, said in a warning)",
            "output written to the slave and not read from the master yet"};
  }
  std::vector<std::string> refused() const override {
    return {"bytes not read by the slave (\"N bytes unread on pty ...\"), or by the master in "
            "packet mode",
            "a line discipline other than N_TTY", "locked termios (TIOCSLCKTRMIOS)",
            "a master without its slave in the tree, or a slave without its master",
            "a master with several open file descriptions",
            "the controlling terminal of a session whose leader is outside the tree",
            "pairs of a devpts instance other than /dev/pts"};
  }
};

// Restore state of the pairs: our master and one slave description of each, by ptys row.
struct PtyRestore {
  std::map<int64_t, UniqueFd> master, slave;
};

std::shared_ptr<PtyRestore> restore_state(RestoreContext& ctx, bool create) {
  static const int key = 0;
  auto it = ctx.kind_state.find(&key);
  if (it != ctx.kind_state.end()) return std::static_pointer_cast<PtyRestore>(it->second);
  if (!create) return nullptr;
  auto s = std::make_shared<PtyRestore>();
  ctx.kind_state[&key] = s;
  return s;
}

// A new pair numbered `want` if that number is free here, else the lowest free one.
UniqueFd new_master(uint32_t want, uint32_t& got) {
  std::vector<UniqueFd> lower;  // pairs below `want`, held until we have ours
  for (int tries = 0; tries < 4096; ++tries) {
    UniqueFd m(::open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!m) throw_errno("cannot open /dev/ptmx", errno, Errc::kernel);
    unsigned n = 0;
    if (::ioctl(m.get(), TIOCGPTN, &n) != 0) throw_errno("TIOCGPTN", errno, Errc::kernel);
    if (n >= want || lower.size() >= 1024) {
      got = n;
      return m;
    }
    lower.push_back(std::move(m));
  }
  fail(Errc::kernel, "cannot get a pseudo-terminal numbered " + std::to_string(want));
}

void set_flags(int fd, uint32_t flags, const std::string& what) {
  if (::fcntl(fd, F_SETFL, static_cast<int>(flags & ~O_ASYNC)) != 0)
    throw_errno("cannot set the flags of " + what, errno, Errc::kernel);
}

void PtyKind::open(RestoreContext& ctx, const std::vector<const schema::FileRecord*>& rows) const {
  if (rows.empty()) return;
  auto state = restore_state(ctx, true);
  for (auto& rec : ctx.meta.ptys) {
    std::vector<const schema::FileRecord*> mine;
    for (const auto* f : rows)
      if (f->pty_id == rec.id) mine.push_back(f);
    if (mine.empty()) continue;
    const std::string what = "pseudo-terminal " + pts_path(rec.index);
    uint32_t n = 0;
    UniqueFd master = new_master(rec.index, n);
    if (n != rec.index)
      ctx.warnings.push_back(what + " is " + pts_path(n) + " now (" + pts_path(rec.index) +
                             " is taken on this host): the job's ttyname() and /proc links of "
                             "its descriptors name the new number");
    int unlock = 0;
    if (::ioctl(master.get(), TIOCSPTLCK, &unlock) != 0)
      throw_errno("unlocking " + what, errno, Errc::kernel);
    struct termios2 t {};
    t.c_iflag = rec.iflag, t.c_oflag = rec.oflag, t.c_cflag = rec.cflag, t.c_lflag = rec.lflag;
    t.c_line = static_cast<cc_t>(rec.line);
    if (rec.cc.size() != NCCS) fail(Errc::corrupt, what + ": its control characters are missing");
    std::copy(rec.cc.begin(), rec.cc.end(), t.c_cc);
    t.c_ispeed = rec.ispeed, t.c_ospeed = rec.ospeed;
    if (::ioctl(master.get(), TCSETS2, &t) != 0) throw_errno("TCSETS2 of " + what, errno, Errc::kernel);
    struct termios2 back {};
    if (::ioctl(master.get(), TCGETS2, &back) != 0 || back.c_ispeed != rec.ispeed ||
        back.c_ospeed != rec.ospeed || back.c_cflag != rec.cflag)
      fail(Errc::kernel, what + ": the kernel did not take its speeds or control flags back");
    struct winsize ws {};
    ws.ws_row = static_cast<unsigned short>(rec.rows), ws.ws_col = static_cast<unsigned short>(rec.cols);
    ws.ws_xpixel = static_cast<unsigned short>(rec.xpixel);
    ws.ws_ypixel = static_cast<unsigned short>(rec.ypixel);
    if (::ioctl(master.get(), TIOCSWINSZ, &ws) != 0)
      throw_errno("TIOCSWINSZ of " + what, errno, Errc::kernel);
    int packet = rec.packet ? 1 : 0;
    if (::ioctl(master.get(), TIOCPKT, &packet) != 0) throw_errno("TIOCPKT of " + what, errno, Errc::kernel);

    UniqueFd first_slave;
    for (const auto* f : mine) {
      if (static_cast<FileKind>(f->kind) == FileKind::pty_master) {
        set_flags(master.get(), f->flags, "the master of " + what);
        ctx.files[f->id] = UniqueFd(::fcntl(master.get(), F_DUPFD_CLOEXEC, 0));
        continue;
      }
      // Each slave description anew, with its access mode (and O_LARGEFILE, which open() adds
      // and TIOCGPTPEER does not); never our controlling terminal. TIOCGPTPEER keeps O_CLOEXEC
      // in the description's flags (where fdinfo would show it for every descriptor): it is
      // set on our descriptor instead.
      constexpr int kLargefile = 0100000;  // the kernel's O_LARGEFILE on x86-64
      int s = ::ioctl(master.get(), TIOCGPTPEER,
                      (static_cast<int>(f->flags) & (O_ACCMODE | kLargefile)) | O_NOCTTY);
      if (s < 0) throw_errno("TIOCGPTPEER of " + what, errno, Errc::kernel);
      UniqueFd slave(s);
      if (::fcntl(slave.get(), F_SETFD, FD_CLOEXEC) != 0)
        throw_errno("F_SETFD of " + what, errno, Errc::kernel);
      set_flags(slave.get(), f->flags, what);
      struct stat st {};
      if (::fstat(slave.get(), &st) != 0) throw_errno("fstat of " + what, errno, Errc::kernel);
      if ((st.st_uid != f->uid || st.st_gid != f->gid) && ::fchown(slave.get(), f->uid, f->gid) != 0)
        throw_errno(what + ": cannot give the slave its owner " + std::to_string(f->uid) + ":" +
                        std::to_string(f->gid),
                    errno, Errc::refused);
      if ((st.st_mode & 07777) != (f->mode & 07777) && ::fchmod(slave.get(), f->mode & 07777) != 0)
        throw_errno(what + ": cannot give the slave its mode", errno, Errc::refused);
      if (!first_slave) first_slave.reset(::fcntl(slave.get(), F_DUPFD_CLOEXEC, 0));
      ctx.files[f->id] = std::move(slave);
    }
    if (!first_slave) fail(Errc::corrupt, what + ": no slave description in the image");
    // Output the master had not read yet, readable from it again.
    if (!rec.to_master.empty()) put_output(master.get(), first_slave.get(), t, rec.to_master, what);
    // What stops further opens comes last.
    if (rec.slave_excl && ::ioctl(first_slave.get(), TIOCEXCL) != 0)
      throw_errno("TIOCEXCL of " + what, errno, Errc::kernel);
    if (rec.master_excl && ::ioctl(master.get(), TIOCEXCL) != 0)
      throw_errno("TIOCEXCL of the master of " + what, errno, Errc::kernel);
    int lock = rec.locked ? 1 : 0;
    if (::ioctl(master.get(), TIOCSPTLCK, &lock) != 0) throw_errno("locking " + what, errno, Errc::kernel);
    state->master[rec.id] = std::move(master);
    state->slave[rec.id] = std::move(first_slave);
  }
}

// /dev/tty: a description bound, when it was opened, to its opener's controlling terminal. Saved
// when that terminal is still the holder's controlling terminal (TIOCGDEV of a copy against
// tty_nr); made again by a holder opening /dev/tty once every process has its terminal back.
class DevTtyKind : public FdKind {
 public:
  const char* name() const override { return "/dev/tty"; }
  bool claims(const FdProbe& p) const override {
    return S_ISCHR(p.st.st_mode) && major(p.st.st_rdev) == 5 && minor(p.st.st_rdev) == 0;
  }
  bool dump(DumpContext& ctx, const FdProbe& probe, schema::FileRecord& rec) const override {
    UniqueFd copy = proc::copy_fd(probe.pidfd, probe.fd);
    unsigned dev = 0;
    if (!copy || ::ioctl(copy.get(), TIOCGDEV, &dev) != 0) {
      ctx.refuse(probe.where + " is /dev/tty, whose terminal cannot be read (TIOCGDEV): " +
                 std::strerror(errno));
      return false;
    }
    const auto stat = proc::stat(probe.pid);
    if (static_cast<unsigned>(stat.tty_nr) != dev) {
      ctx.refuse(probe.where + " is /dev/tty of " + tty_name(dev) + ", which is not the "
                 "process's controlling terminal (" +
                 (stat.tty_nr ? tty_name(static_cast<uint64_t>(stat.tty_nr)) : "none") +
                 "); not supported");
      return false;
    }
    rec.kind = static_cast<uint32_t>(FileKind::dev_tty);
    return true;
  }
  void open(RestoreContext&, const std::vector<const schema::FileRecord*>&) const override {}
  bool deferred() const override { return true; }
  UniqueFd open_late(RestoreContext& ctx, const schema::FileRecord& f) const override {
    RestoredProcess* p = nullptr;
    for (auto& fd : ctx.meta.fds) {
      if (fd.file_id != f.id) continue;
      auto it = ctx.by_pid.find(fd.pid);
      if (it != ctx.by_pid.end() && it->second->role == RestoredProcess::Role::process) {
        p = it->second;
        break;
      }
    }
    if (!p) fail(Errc::corrupt, "file row " + std::to_string(f.id) + " (/dev/tty) has no holder");
    const int flags = static_cast<int>(f.flags & ~static_cast<uint32_t>(O_CREAT | O_ASYNC)) |
                      O_CLOEXEC | O_NOCTTY;
    long there = p->inj->raw(SYS_openat, static_cast<uint64_t>(AT_FDCWD),
                             ctx.put_string(*p, "/dev/tty", 3072), static_cast<uint64_t>(flags));
    if (there < 0)
      throw Error(Errc::kernel, "process " + std::to_string(p->rec->pid) + " cannot open /dev/tty",
                  static_cast<int>(-there));
    UniqueFd pidfd = proc::open_pidfd(p->pid);
    UniqueFd ours = pidfd ? proc::copy_fd(pidfd.get(), static_cast<int>(there)) : UniqueFd();
    int err = errno;
    p->inj->raw(SYS_close, static_cast<uint64_t>(there));
    if (!ours) throw_errno("cannot take the new /dev/tty of process " + std::to_string(p->rec->pid),
                           err, Errc::kernel);
    return ours;
  }
  std::vector<std::string> restored() const override {
    return {"opened again by a holder once it has its controlling terminal back", "status flags"};
  }
  std::vector<std::string> refused() const override {
    return {"/dev/tty of a terminal that is no longer its holder's controlling terminal"};
  }
};

}  // namespace

const FdKind& pty_kind() {
  static const PtyKind kind;
  return kind;
}

const FdKind& dev_tty_kind() {
  static const DevTtyKind kind;
  return kind;
}

void acquire_controlling_tty(RestoreContext& ctx, RestoredProcess& p) {
  auto state = restore_state(ctx, false);
  if (!state) return;
  for (auto& rec : ctx.meta.ptys) {
    if (rec.sid == 0 || rec.sid != p.rec->pid) continue;
    auto it = state->slave.find(rec.id);
    if (it == state->slave.end()) fail(Errc::internal, "pty row " + std::to_string(rec.id) + " not made");
    int there = ctx.install_fd(p, it->second.get());
    long rc = p.inj->raw(SYS_ioctl, static_cast<uint64_t>(there), TIOCSCTTY, 0);
    p.inj->raw(SYS_close, static_cast<uint64_t>(there));
    if (rc < 0)
      throw Error(Errc::kernel, "process " + std::to_string(p.rec->pid) + " cannot take " +
                                    pts_path(rec.index) + " as its controlling terminal (TIOCSCTTY)",
                  static_cast<int>(-rc));
  }
}

void restore_tty_foreground(RestoreContext& ctx) {
  auto state = restore_state(ctx, false);
  if (!state) return;
  for (auto& rec : ctx.meta.ptys) {
    if (rec.sid == 0 || rec.pgrp == 0) continue;
    auto leader = ctx.by_pid.find(rec.sid);
    if (leader == ctx.by_pid.end())
      fail(Errc::internal, "the leader of session " + std::to_string(rec.sid) + " was not made");
    RestoredProcess& p = *leader->second;
    int there = ctx.install_fd(p, state->slave.at(rec.id).get());
    int32_t pgrp = rec.pgrp;
    uint64_t arg = ctx.put(p, &pgrp, sizeof pgrp, 3072);
    long rc = p.inj->raw(SYS_ioctl, static_cast<uint64_t>(there), TIOCSPGRP, arg);
    p.inj->raw(SYS_close, static_cast<uint64_t>(there));
    if (rc < 0)
      throw Error(Errc::kernel, "cannot make process group " + std::to_string(rec.pgrp) +
                                    " the foreground of " + pts_path(rec.index) + " (TIOCSPGRP)",
                  static_cast<int>(-rc));
  }
}

}  // namespace crest::fds
