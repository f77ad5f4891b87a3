#include "agent/cli/describe.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/mman.h>

#include <algorithm>
#include <map>
#include <ostream>

#include "agent/cli/image_target.h"
#include "agent/cli/report.h"

namespace crest::cli {

using nlohmann::json;
using schema::Table;

std::string_view vma_kind_name(uint32_t kind) {
  switch (static_cast<schema::VmaKind>(kind)) {
    case schema::VmaKind::anon_private:
      return "anon-private";
    case schema::VmaKind::anon_shared:
      return "anon-shared";
    case schema::VmaKind::file_private:
      return "file-private";
    case schema::VmaKind::file_shared:
      return "file-shared";
    case schema::VmaKind::memfd:
      return "memfd";
    case schema::VmaKind::vdso:
      return "vdso";
    case schema::VmaKind::vsyscall:
      return "vsyscall";
    case schema::VmaKind::aio:
      return "aio-ring";
    case schema::VmaKind::sysv_shm:
      return "sysv-shm";
  }
  return "unknown";
}

std::string_view file_kind_name(uint32_t kind) {
  switch (static_cast<schema::FileKind>(kind)) {
    case schema::FileKind::regular:
      return "regular";
    case schema::FileKind::directory:
      return "directory";
    case schema::FileKind::pipe:
      return "pipe";
    case schema::FileKind::fifo:
      return "fifo";
    case schema::FileKind::memfd:
      return "memfd";
    case schema::FileKind::unlinked:
      return "unlinked";
    case schema::FileKind::shm_file:
      return "shm-file";
    case schema::FileKind::chardev:
      return "chardev";
    case schema::FileKind::inherited:
      return "inherited";
    case schema::FileKind::shmem:
      return "shmem";
    case schema::FileKind::proc:
      return "procfs";
    case schema::FileKind::path:
      return "o-path";
    case schema::FileKind::eventfd:
      return "eventfd";
    case schema::FileKind::timerfd:
      return "timerfd";
    case schema::FileKind::signalfd:
      return "signalfd";
    case schema::FileKind::epoll:
      return "epoll";
    case schema::FileKind::inotify:
      return "inotify";
    case schema::FileKind::pidfd:
      return "pidfd";
    case schema::FileKind::unix_socket:
      return "unix-socket";
    case schema::FileKind::tcp_socket:
      return "tcp-socket";
    case schema::FileKind::udp_socket:
      return "udp-socket";
    case schema::FileKind::netlink_socket:
      return "netlink-socket";
    case schema::FileKind::mqueue:
      return "mqueue";
    case schema::FileKind::pty_master:
      return "pty-master";
    case schema::FileKind::pty_slave:
      return "pty-slave";
    case schema::FileKind::dev_tty:
      return "dev-tty";
  }
  return "unknown";
}

std::string prot_text(uint32_t prot, uint32_t map_flags) {
  std::string s = "---p";
  if (prot & PROT_READ) s[0] = 'r';
  if (prot & PROT_WRITE) s[1] = 'w';
  if (prot & PROT_EXEC) s[2] = 'x';
  if (map_flags & MAP_SHARED) s[3] = 's';
  return s;
}

std::string open_flags_text(uint32_t flags) {
  std::string s;
  switch (flags & O_ACCMODE) {
    case O_RDONLY:
      s = "O_RDONLY";
      break;
    case O_WRONLY:
      s = "O_WRONLY";
      break;
    case O_RDWR:
      s = "O_RDWR";
      break;
    default:
      s = "O_ACCMODE=3";
      break;
  }
  static constexpr std::pair<uint32_t, const char*> kNames[] = {
      {O_APPEND, "O_APPEND"},
      {O_NONBLOCK, "O_NONBLOCK"},
      {O_SYNC, "O_SYNC"},
      {O_DSYNC, "O_DSYNC"},
      {O_DIRECT, "O_DIRECT"},
      {O_NOATIME, "O_NOATIME"},
      {O_PATH, "O_PATH"},
      {O_DIRECTORY, "O_DIRECTORY"},
      // glibc defines O_LARGEFILE as 0 on 64-bit; the kernel still reports its bit in fdinfo.
      {0100000, "O_LARGEFILE"},
      {O_CLOEXEC, "O_CLOEXEC"},
  };
  uint32_t rest = flags & ~static_cast<uint32_t>(O_ACCMODE);
  for (auto [bit, name] : kNames) {
    // O_SYNC includes the O_DSYNC bit: name each word only when all of its bits are set.
    if (bit != 0 && (rest & bit) == bit) {
      s += '|';
      s += name;
      rest &= ~bit;
    }
  }
  if (rest != 0) s += "|" + format_hex(rest);
  return s;
}

uint64_t pages_in_range(const std::vector<schema::PageRun>& index, uint64_t owner, uint64_t start,
                        uint64_t end) {
  auto before = [](const schema::PageRun& run, std::pair<uint64_t, uint64_t> key) {
    return std::pair(run.owner, run.addr) < key;
  };
  auto it = std::lower_bound(index.begin(), index.end(), std::pair(owner, start), before);
  // The run just before `start` may reach into the range.
  if (it != index.begin() && std::prev(it)->owner == owner) --it;
  uint64_t pages = 0;
  for (; it != index.end() && it->owner == owner && it->addr < end; ++it) {
    uint64_t run_end = it->addr + it->npages * schema::kPageSize;
    uint64_t lo = std::max(start, it->addr);
    uint64_t hi = std::min(end, run_end);
    if (hi > lo) pages += (hi - lo) / schema::kPageSize;
  }
  return pages;
}

namespace {

json describe_info(const schema::ImageInfo& info) {
  json j = record_to_json<Table<schema::ImageInfo>>(info);
  j["complete"] = info.complete;
  j["created"] = format_time_iso(info.created_ns);
  j["incremental"] = !info.parent_uuid.empty() || !info.parent_file.empty();
  return j;
}

json describe_processes(const schema::CheckpointMeta& meta,
                        const std::vector<schema::PageRun>& index) {
  std::map<int64_t, const schema::FileRecord*> files;
  for (const auto& f : meta.files) files[f.id] = &f;

  json out = json::array();
  for (const auto& p : meta.processes) {
    json j = record_to_json<Table<schema::ProcessRecord>>(p);
    j["threads"] = std::count_if(meta.threads.begin(), meta.threads.end(),
                                 [&](const auto& t) { return t.pid == p.pid; });
    json vmas = json::array();
    uint64_t present = 0;
    for (const auto& v : meta.vmas) {
      if (v.pid != p.pid) continue;
      json vj = record_to_json<Table<schema::VmaRecord>>(v);
      uint64_t pages = pages_in_range(index, v.owner, v.start, v.end);
      present += pages;
      vj["kind_name"] = vma_kind_name(v.kind);
      vj["prot_text"] = prot_text(v.prot, v.flags);
      vj["pages_present"] = pages;
      vmas.push_back(std::move(vj));
    }
    j["vma_count"] = vmas.size();
    j["pages_present"] = present;
    j["vmas"] = std::move(vmas);

    json fds = json::array();
    for (const auto& fd : meta.fds) {
      if (fd.pid != p.pid) continue;
      json fj = {{"fd", fd.fd},
                 {"fd_flags", fd.fd_flags},
                 {"cloexec", (fd.fd_flags & FD_CLOEXEC) != 0},
                 {"file_id", fd.file_id}};
      if (auto it = files.find(fd.file_id); it != files.end()) {
        json file = record_to_json<Table<schema::FileRecord>>(*it->second);
        file["kind_name"] = file_kind_name(it->second->kind);
        file["flags_text"] = open_flags_text(it->second->flags);
        fj["file"] = std::move(file);
      } else {
        fj["file"] = nullptr;  // a dangling reference: show it rather than hide it
      }
      fds.push_back(std::move(fj));
    }
    j["fds"] = std::move(fds);
    out.push_back(std::move(j));
  }
  return out;
}

}  // namespace

json describe_checkpoint(const storage::CheckpointReader& reader, const std::string& file) {
  const schema::CheckpointMeta& meta = reader.meta();
  const auto& index = reader.page_index();
  json doc;
  doc["file"] = file;
  doc["name"] = reader.name();
  doc["size_bytes"] = file_size(file);
  doc["chain"] = reader.chain();
  doc["info"] = describe_info(meta.info);

  json tables = json::object();
  schema::for_each_table(meta, [&](const auto& rows) {
    using Record = typename std::decay_t<decltype(rows)>::value_type;
    tables[Table<Record>::name] = rows.size();
  });
  doc["tables"] = std::move(tables);
  doc["processes"] = describe_processes(meta, index);
  // Unix sockets whose peer is outside the tree (--ext-unix-sk) and what restore makes of them.
  json outside = json::array();
  for (const auto& s : meta.sockets) {
    if (s.family != AF_UNIX || !s.external) continue;
    std::string peer(s.peer_name.begin(), s.peer_name.end());
    if (!peer.empty() && peer[0] == '\0') peer[0] = '@';
    while (!peer.empty() && peer.back() == '\0') peer.pop_back();
    json holders = json::array();
    for (const auto& fd : meta.fds)
      if (fd.file_id == s.file_id) holders.push_back({{"pid", fd.pid}, {"fd", fd.fd}});
    outside.push_back({{"file_id", s.file_id},
                       {"type", s.type == SOCK_DGRAM ? "datagram" : s.type == SOCK_STREAM ? "stream" : "seqpacket"},
                       {"peer", peer},
                       {"restored_as", s.type == SOCK_DGRAM ? "connected again" : "a new connection"},
                       {"holders", std::move(holders)}});
  }
  doc["outside_unix_peers"] = std::move(outside);

  uint64_t present = 0, zero = 0, stored = 0, kept = 0, cow = 0;
  for (const auto& run : index) {
    present += run.npages;
    switch (static_cast<schema::PageKind>(run.kind)) {
      case schema::PageKind::data:
        (run.depth == 0 ? stored : kept) += run.npages;
        break;
      case schema::PageKind::zero:
        zero += run.npages;
        break;
      case schema::PageKind::cow_parent:
        cow += run.npages;
        break;
    }
  }
  doc["pages"] = {{"present", present},   {"zero", zero},      {"stored", stored},
                  {"in_ancestors", kept}, {"cow_parent", cow}, {"runs", index.size()}};

  uint64_t chunk_bytes = 0, raw = 0, shuffled = 0;
  for (const auto& c : reader.chunks()) {
    chunk_bytes += c.stored_bytes;
    if (c.encoding() == schema::ChunkEncoding::raw) ++raw;
    if (c.encoding() == schema::ChunkEncoding::shuffle_lz4) ++shuffled;
  }
  uint64_t data_bytes = stored * schema::kPageSize;
  doc["bytes"] = {
      {"input", present * schema::kPageSize},  // the memory the checkpoint describes
      {"data", data_bytes},                    // page bytes held by this file, uncompressed
      {"stored", chunk_bytes},                 // what those take in this file's chunks
      {"compression_ratio",
       chunk_bytes == 0 ? json(nullptr)
                        : json(static_cast<double>(data_bytes) / static_cast<double>(chunk_bytes))},
  };
  doc["chunks"] = {{"total", reader.chunks().size()}, {"raw", raw}, {"shuffled", shuffled}};
  doc["stats"] = meta.stats;
  return doc;
}

// ---- human report ----------------------------------------------------------------------------

namespace {

std::string str(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_null()) return "-";
  return j.dump();
}
std::string or_dash(const std::string& s) { return s.empty() ? "-" : s; }
uint64_t u64(const json& j) { return j.get<uint64_t>(); }

void print_identity(std::ostream& out, const json& doc) {
  const json& info = doc["info"];
  FieldList f;
  f.add("uuid", str(info["uuid"]));
  if (info["incremental"].get<bool>()) {
    f.add("parent", str(info["parent_file"]) + " (" + str(info["parent_uuid"]) + ")");
  } else {
    f.add("parent", "none (full checkpoint)");
  }
  f.add("sequence", str(info["sequence"]));
  f.add("created", format_time(info["created_ns"].get<int64_t>()));
  f.add("host", or_dash(str(info["host"])));
  f.add("kernel",
        or_dash(str(info["kernel_release"])) + " " + str(info["machine"]) +
            (info["kernel_build"].get<std::string>().empty() ? ""
                                                             : ", " + str(info["kernel_build"])));
  f.add("crest version", or_dash(str(info["crest_version"])));
  f.add("format", str(info["format"]) + " v" + str(info["format_version"]));
  f.add("job",
        or_dash(str(info["job_id"])) + ", scheduler job " + or_dash(str(info["scheduler_job_id"])));
  f.add("root pid", str(info["root_pid"]) +
                        (info["pid_namespace"].get<uint32_t>() != 0 ? " (own pid namespace)" : ""));
  f.add("mode", str(info["mode"]));
  f.add("dirty tracking", str(info["tracker"]));
  if (info.value("ext_unix_sk", 0u) != 0) {
    std::string peers;
    for (const auto& p : doc["outside_unix_peers"])
      peers += (peers.empty() ? "" : ", ") + str(p["peer"]) + " (" + str(p["type"]) + ", " +
               str(p["restored_as"]) + ")";
    f.add("--ext-unix-sk", "yes; Unix peers outside the tree: " + (peers.empty() ? std::string("none") : peers));
  }
  f.add("complete", info["complete"].get<uint32_t>() != 0 ? "yes" : "no");
  f.add("file size", format_bytes(u64(doc["size_bytes"])));
  print_heading(out, "identity");
  f.print(out);
}

void print_processes(std::ostream& out, const json& doc, bool verbose) {
  const json& procs = doc["processes"];
  print_heading(out, "processes (" + std::to_string(procs.size()) + ")");
  if (procs.empty()) {
    out << "  none\n";
    return;
  }
  TextTable t({"PID", "PPID", "PGID", "SID", "THREADS", "VMAS", "PAGES", "FDS", "COMM", "EXE"});
  for (const auto& p : procs) {
    t.add({str(p["pid"]), str(p["ppid"]), str(p["pgid"]), str(p["sid"]), str(p["threads"]),
           str(p["vma_count"]), str(p["pages_present"]), std::to_string(p["fds"].size()),
           or_dash(str(p["comm"])), or_dash(str(p["exe"]))});
  }
  t.print(out);

  if (verbose) {
    for (const auto& p : procs) {
      print_heading(out, "memory maps of pid " + str(p["pid"]) + " (" + str(p["vma_count"]) + ")");
      TextTable vt({"START", "END", "PROT", "KIND", "PAGES", "NAME"});
      for (const auto& v : p["vmas"]) {
        vt.add({format_hex(u64(v["start"])), format_hex(u64(v["end"])), str(v["prot_text"]),
                str(v["kind_name"]), str(v["pages_present"]), str(v["name"])});
      }
      vt.print(out);
    }
  }

  for (const auto& p : procs) {
    if (p["fds"].empty()) continue;
    print_heading(out, "open files of pid " + str(p["pid"]));
    TextTable ft({"FD", "KIND", "FLAGS", "POS", "PATH"});
    for (const auto& fd : p["fds"]) {
      const json& file = fd["file"];
      if (file.is_null()) {
        ft.add({str(fd["fd"]), "?", "-", "-", "(no file row " + str(fd["file_id"]) + ")"});
        continue;
      }
      std::string flags = str(file["flags_text"]);
      if (fd["cloexec"].get<bool>() && flags.find("O_CLOEXEC") == std::string::npos)
        flags += "|O_CLOEXEC";
      ft.add({str(fd["fd"]), str(file["kind_name"]), flags, str(file["pos"]),
              or_dash(str(file["path"]))});
    }
    ft.print(out);
  }
}

void print_pages(std::ostream& out, const json& doc) {
  const json& pages = doc["pages"];
  const json& bytes = doc["bytes"];
  const json& chunks = doc["chunks"];
  auto pages_line = [](uint64_t n) {
    return std::to_string(n) + " (" + format_bytes(n * schema::kPageSize) + ")";
  };
  print_heading(out, "pages");
  FieldList p;
  p.add("present", pages_line(u64(pages["present"])));
  p.add("zero", pages_line(u64(pages["zero"])) + ", recorded, not stored");
  p.add("stored here", pages_line(u64(pages["stored"])));
  p.add("in ancestors", pages_line(u64(pages["in_ancestors"])));
  p.add("cow-shared", pages_line(u64(pages["cow_parent"])) + ", restored from the parent process");
  p.print(out);

  print_heading(out, "bytes");
  FieldList b;
  b.add("input", format_bytes(u64(bytes["input"])) + " (present pages x " +
                     std::to_string(schema::kPageSize) + ")");
  b.add("data here",
        format_bytes(u64(bytes["data"])) + " (pages stored in this file, uncompressed)");
  uint64_t nchunks = u64(chunks["total"]);
  b.add("stored", format_bytes(u64(bytes["stored"])) + " in " + std::to_string(nchunks) +
                      (nchunks == 1 ? " chunk (" : " chunks (") + str(chunks["shuffled"]) +
                      " byte-shuffled before LZ4, " + str(chunks["raw"]) +
                      " stored raw, not compressible)");
  b.add("compression", format_ratio(u64(bytes["data"]), u64(bytes["stored"])) + " : 1");
  b.print(out);
}

void print_stats(std::ostream& out, const json& doc) {
  print_heading(out, "stats");
  if (doc["stats"].empty()) {
    out << "  none recorded\n";
    return;
  }
  FieldList s;
  for (const auto& [key, value] : doc["stats"].items())
    s.add(key, format_stat(key, value.get<int64_t>()));
  s.print(out);
}

}  // namespace

void print_checkpoint(std::ostream& out, const json& doc, bool verbose) {
  std::string chain;
  for (const auto& name : doc["chain"])
    chain += (chain.empty() ? "" : " <- ") + name.get<std::string>();
  out << "checkpoint  " << str(doc["file"]) << '\n';
  out << "chain       " << chain << "  (newest first)\n";
  print_identity(out, doc);
  print_processes(out, doc, verbose);
  print_pages(out, doc);
  print_stats(out, doc);
}

}  // namespace crest::cli
