#include "storage/h5_direct_vfd.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <mutex>
#include <string>

#include "core/util/log.h"

namespace crest::storage::h5 {
namespace {

auto logger() { return log::get("storage.h5"); }

// The largest address: off_t is signed.
constexpr haddr_t kMaxAddr = (haddr_t{1} << 63) - 1;

struct DirectFile {
  H5FD_t pub;  // first: HDF5 hands us back this pointer
  int fd = -1;         // buffered: metadata, small chunks, partial last blocks, every read
  int direct_fd = -1;  // O_DIRECT, or -1
  haddr_t eoa = 0;
  haddr_t eof = 0;
  dev_t dev = 0;
  ino_t ino = 0;
  uint64_t direct_bytes = 0;
  uint64_t buffered_bytes = 0;
  int64_t direct_ns = 0;
  int64_t buffered_ns = 0;
  bool fallback_logged = false;
};

// Puts a failed system call on HDF5's error stack, innermost, as HDF5's own drivers do: the
// message crest reports names the cause (No space left on device, ...).
void push_error(hid_t minor, const std::string& what, int err) {
  const std::string msg = what + ": " + std::strerror(err) + " (errno " + std::to_string(err) + ")";
  H5Epush2(H5E_DEFAULT, __FILE__, "crest_direct", __LINE__, H5E_ERR_CLS, H5E_VFL, minor, "%s",
           msg.c_str());
  logger()->debug("{}", msg);
}

DirectFile* self(H5FD_t* f) { return reinterpret_cast<DirectFile*>(f); }
const DirectFile* self(const H5FD_t* f) { return reinterpret_cast<const DirectFile*>(f); }

int64_t mono_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

bool write_all(int fd, const std::byte* p, size_t n, off_t at) {
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, at);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (w == 0) {
      errno = EIO;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
    at += w;
  }
  return true;
}

void stop_direct(DirectFile* f, const char* why, int err) {
  if (f->direct_fd >= 0) ::close(f->direct_fd);
  f->direct_fd = -1;
  if (!f->fallback_logged)
    logger()->debug("image writes go through the page cache: {} ({})", why, std::strerror(err));
  f->fallback_logged = true;
}

H5FD_t* open_file(const char* name, unsigned flags, hid_t /*fapl*/, haddr_t maxaddr) {
  if (name == nullptr || *name == 0 || maxaddr == 0 || maxaddr > kMaxAddr) return nullptr;
  int o = O_CLOEXEC | ((flags & H5F_ACC_RDWR) ? O_RDWR : O_RDONLY);
  if (flags & H5F_ACC_TRUNC) o |= O_TRUNC;
  if (flags & H5F_ACC_CREAT) o |= O_CREAT;
  if (flags & H5F_ACC_EXCL) o |= O_EXCL;
  int fd = ::open(name, o, 0600);
  if (fd < 0) {
    push_error(H5E_CANTOPENFILE, std::string("cannot open ") + name, errno);
    return nullptr;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    push_error(H5E_CANTOPENFILE, std::string("cannot stat ") + name, errno);
    ::close(fd);
    return nullptr;
  }
  auto* f = new (std::nothrow) DirectFile{};
  if (f == nullptr) {
    ::close(fd);
    return nullptr;
  }
  f->fd = fd;
  f->eof = static_cast<haddr_t>(st.st_size);
  f->dev = st.st_dev;
  f->ino = st.st_ino;
  if (flags & H5F_ACC_RDWR) {
    // A second open file description of the same file: through /proc/self/fd for a name that is
    // itself one of our descriptors, it is the same inode whatever the name points at now.
    const std::string again = "/proc/self/fd/" + std::to_string(fd);
    f->direct_fd = ::open(again.c_str(), O_RDWR | O_CLOEXEC | O_DIRECT);
    if (f->direct_fd < 0) stop_direct(f, "O_DIRECT refused by the file system", errno);
  }
  return &f->pub;
}

herr_t close_file(H5FD_t* file) {
  DirectFile* f = self(file);
  int rc = 0;
  if (f->direct_fd >= 0 && ::close(f->direct_fd) != 0) rc = -1;
  if (f->fd >= 0 && ::close(f->fd) != 0) rc = -1;
  delete f;
  return rc;
}

int compare(const H5FD_t* a, const H5FD_t* b) {
  const DirectFile* x = self(a);
  const DirectFile* y = self(b);
  if (x->dev != y->dev) return x->dev < y->dev ? -1 : 1;
  if (x->ino != y->ino) return x->ino < y->ino ? -1 : 1;
  return 0;
}

herr_t query(const H5FD_t* /*file*/, unsigned long* flags) {
  if (flags != nullptr)
    *flags = H5FD_FEAT_AGGREGATE_METADATA | H5FD_FEAT_ACCUMULATE_METADATA |
             H5FD_FEAT_DATA_SIEVE | H5FD_FEAT_AGGREGATE_SMALLDATA |
             H5FD_FEAT_POSIX_COMPAT_HANDLE | H5FD_FEAT_DEFAULT_VFD_COMPATIBLE;
  return 0;
}

haddr_t get_eoa(const H5FD_t* file, H5FD_mem_t /*type*/) { return self(file)->eoa; }

herr_t set_eoa(H5FD_t* file, H5FD_mem_t /*type*/, haddr_t addr) {
  if (addr > kMaxAddr) return -1;
  self(file)->eoa = addr;
  return 0;
}

haddr_t get_eof(const H5FD_t* file, H5FD_mem_t /*type*/) { return self(file)->eof; }

herr_t get_handle(H5FD_t* file, hid_t /*fapl*/, void** handle) {
  if (handle == nullptr) return -1;
  *handle = &self(file)->fd;
  return 0;
}

herr_t read_file(H5FD_t* file, H5FD_mem_t /*type*/, hid_t /*dxpl*/, haddr_t addr, size_t size,
                 void* buf) {
  DirectFile* f = self(file);
  if (addr > kMaxAddr || size > kMaxAddr - addr || addr + size > f->eoa) return -1;
  auto* p = static_cast<std::byte*>(buf);
  off_t at = static_cast<off_t>(addr);
  while (size > 0) {
    ssize_t r = ::pread(f->fd, p, size, at);
    if (r < 0) {
      if (errno == EINTR) continue;
      push_error(H5E_READERROR, "read of " + std::to_string(size) + " bytes at " +
                                    std::to_string(at) + " failed",
                 errno);
      return -1;
    }
    if (r == 0) {  // past the end of the file: HDF5 expects zeros
      std::memset(p, 0, size);
      break;
    }
    p += r;
    size -= static_cast<size_t>(r);
    at += r;
  }
  return 0;
}

herr_t write_file(H5FD_t* file, H5FD_mem_t type, hid_t /*dxpl*/, haddr_t addr, size_t size,
                  const void* buf) {
  DirectFile* f = self(file);
  if (addr > kMaxAddr || size > kMaxAddr - addr || addr + size > f->eoa) return -1;
  const auto* p = static_cast<const std::byte*>(buf);
  size_t whole = 0;
  if (f->direct_fd >= 0 && type == H5FD_MEM_DRAW && addr % kDirectAlign == 0 &&
      reinterpret_cast<uintptr_t>(p) % kDirectAlign == 0)
    whole = size / kDirectAlign * kDirectAlign;
  if (whole > 0) {
    const int64_t t0 = mono_ns();
    if (write_all(f->direct_fd, p, whole, static_cast<off_t>(addr))) {
      f->direct_bytes += whole;
      f->direct_ns += mono_ns() - t0;
    } else if (errno == EINVAL) {
      // The file system wants another alignment, or takes no direct writes after all.
      stop_direct(f, "a direct write was refused", errno);
      whole = 0;
    } else {
      push_error(H5E_WRITEERROR, "direct write of " + std::to_string(whole) + " bytes at " +
                                     std::to_string(addr) + " failed",
                 errno);
      return -1;
    }
  }
  if (size > whole) {
    const int64_t t0 = mono_ns();
    if (!write_all(f->fd, p + whole, size - whole, static_cast<off_t>(addr + whole))) {
      push_error(H5E_WRITEERROR, "write of " + std::to_string(size - whole) + " bytes at " +
                                     std::to_string(addr + whole) + " failed",
                 errno);
      return -1;
    }
    f->buffered_bytes += size - whole;
    f->buffered_ns += mono_ns() - t0;
  }
  if (addr + size > f->eof) f->eof = addr + size;
  return 0;
}

herr_t truncate_file(H5FD_t* file, hid_t /*dxpl*/, hbool_t /*closing*/) {
  DirectFile* f = self(file);
  if (f->eoa == f->eof) return 0;
  if (::ftruncate(f->fd, static_cast<off_t>(f->eoa)) != 0) {
    push_error(H5E_SEEKERROR, "cannot truncate to " + std::to_string(f->eoa) + " bytes", errno);
    return -1;
  }
  f->eof = f->eoa;
  return 0;
}

herr_t lock_file(H5FD_t* file, hbool_t rw) {
  if (::flock(self(file)->fd, (rw ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0) {
    // Like HDF5's own drivers where the file system has no locks: carry on.
    if (errno == ENOSYS) return 0;
    push_error(H5E_CANTLOCKFILE, "cannot lock the file", errno);
    return -1;
  }
  return 0;
}

herr_t unlock_file(H5FD_t* file) {
  if (::flock(self(file)->fd, LOCK_UN) != 0 && errno != ENOSYS) return -1;
  return 0;
}

H5FD_class_t make_class() {
  H5FD_class_t c{};
  c.name = "crest_direct";
  c.maxaddr = kMaxAddr;
  c.fc_degree = H5F_CLOSE_WEAK;
  c.open = open_file;
  c.close = close_file;
  c.cmp = compare;
  c.query = query;
  c.get_eoa = get_eoa;
  c.set_eoa = set_eoa;
  c.get_eof = get_eof;
  c.get_handle = get_handle;
  c.read = read_file;
  c.write = write_file;
  c.truncate = truncate_file;
  c.lock = lock_file;
  c.unlock = unlock_file;
  // Raw data apart from metadata, as sec2 does.
  c.fl_map[H5FD_MEM_DEFAULT] = H5FD_MEM_SUPER;
  c.fl_map[H5FD_MEM_SUPER] = H5FD_MEM_SUPER;
  c.fl_map[H5FD_MEM_BTREE] = H5FD_MEM_SUPER;
  c.fl_map[H5FD_MEM_DRAW] = H5FD_MEM_DRAW;
  c.fl_map[H5FD_MEM_GHEAP] = H5FD_MEM_DRAW;
  c.fl_map[H5FD_MEM_LHEAP] = H5FD_MEM_SUPER;
  c.fl_map[H5FD_MEM_OHDR] = H5FD_MEM_SUPER;
  return c;
}

const H5FD_class_t kClass = make_class();

hid_t driver_id() {
  static hid_t id = H5I_INVALID_HID;
  static std::once_flag once;
  std::call_once(once, [] { id = H5FDregister(&kClass); });
  return id;
}

}  // namespace

void use_direct_driver(hid_t fapl) {
  hid_t id = driver_id();
  if (id < 0) {
    H5Eclear2(H5E_DEFAULT);
    logger()->debug("cannot register the O_DIRECT file driver: writing through the page cache");
    return;
  }
  if (H5Pset_driver(fapl, id, nullptr) < 0 ||
      H5Pset_alignment(fapl, kDirectThreshold, kDirectAlign) < 0) {
    H5Eclear2(H5E_DEFAULT);
    logger()->debug("cannot set the O_DIRECT file driver: writing through the page cache");
  }
}

DirectCounters direct_counters(hid_t file) {
  DirectCounters out;
  hid_t fapl = H5Fget_access_plist(file);
  if (fapl < 0) {
    H5Eclear2(H5E_DEFAULT);
    return out;
  }
  hid_t drv = H5Pget_driver(fapl);
  H5Pclose(fapl);
  if (drv != driver_id()) return out;
  void* handle = nullptr;
  if (H5Fget_vfd_handle(file, H5P_DEFAULT, &handle) < 0 || handle == nullptr) {
    H5Eclear2(H5E_DEFAULT);
    return out;
  }
  const auto* f = reinterpret_cast<const DirectFile*>(static_cast<const std::byte*>(handle) -
                                                      offsetof(DirectFile, fd));
  out.direct_bytes = f->direct_bytes;
  out.buffered_bytes = f->buffered_bytes;
  out.direct_ns = f->direct_ns;
  out.buffered_ns = f->buffered_ns;
  out.direct = f->direct_fd >= 0;
  return out;
}

}  // namespace crest::storage::h5
