#include "storage/h5_util.h"

#include <algorithm>
#include <cstdio>
#include <mutex>

#include "core/util/log.h"
#include "storage/lz4_chunk.h"

namespace crest::storage::h5 {

namespace {

// Bytes of a table chunk (rounded to whole rows).
constexpr size_t kTableChunkBytes = 1 << 20;
// How many times its stored size a table may take in memory when read (LZ4's bound is 255).
constexpr hsize_t kMaxExpansion = 1024;

void quiet_thread() noexcept {
  thread_local bool quiet = false;
  if (!quiet) {
    // HDF5 prints every failure to stderr by default; crest reports errors once, itself.
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    quiet = true;
  }
}

}  // namespace

void init() {
  // No library shutdown at exit: every file is closed by its owner before then, and after a
  // close that failed HDF5 1.10's shutdown would crash on the half-closed file. Only effective
  // before the library's first call (later it is a harmless no-op).
  static std::once_flag atexit_once;
  std::call_once(atexit_once, [] { (void)H5dont_atexit(); });
  quiet_thread();
  static std::once_flag filter_once;
  std::call_once(filter_once, [] {
    register_lz4_filter();
    // HDF5 keeps freed blocks on free lists without a bound by default; in a daemon that reads
    // and writes checkpoints for weeks they only grow. A few MiB is all they need.
    H5set_free_list_limits(4 << 20, 1 << 20, 4 << 20, 1 << 20, 4 << 20, 1 << 20);
  });
}

void Handle::reset() noexcept {
  if (id_ >= 0 && closer_ != nullptr) {
    quiet_thread();  // a handle may be closed on another thread than the one that opened it
    if (closer_(id_) < 0) {
      H5Eclear2(H5E_DEFAULT);
      log::get("storage.h5")->debug("closing HDF5 object {} failed", id_);
    }
  }
  id_ = H5I_INVALID_HID;
}

void Handle::close(Errc kind, const std::string& what) {
  hid_t id = id_;
  id_ = H5I_INVALID_HID;
  if (id >= 0 && closer_ != nullptr && closer_(id) < 0) raise(kind, what);
}

namespace {

struct StackWalk {
  std::string innermost;  // the description where the error was detected
  std::string outer;      // the API-level description, used when the inner one is empty
  bool truncated = false;
  bool not_hdf5 = false;
  bool checksum = false;
};

herr_t walk_entry(unsigned n, const H5E_error2_t* e, void* data) {
  auto* w = static_cast<StackWalk*>(data);
  std::string desc = e->desc != nullptr ? e->desc : "";
  if (n == 0) w->innermost = desc;
  if (!desc.empty()) w->outer = desc;
  if (e->min_num == H5E_TRUNCATED) w->truncated = true;
  if (e->min_num == H5E_NOTHDF5) w->not_hdf5 = true;
  // HDF5 1.10 has no minor code for it; the 1.10 format checksums its metadata.
  if (desc.find("checksum") != std::string::npos) w->checksum = true;
  // "file signature not found" is how HDF5 says the bytes are not HDF5 at all.
  if (desc.find("signature not found") != std::string::npos) w->not_hdf5 = true;
  return 0;
}

}  // namespace

void raise(Errc fallback, const std::string& what) {
  StackWalk w;
  hid_t stack = H5Eget_current_stack();
  if (stack >= 0) {
    // Upward: from the function that detected the problem to the API call.
    H5Ewalk2(stack, H5E_WALK_UPWARD, walk_entry, &w);
    H5Eclose_stack(stack);
  }
  Errc kind = fallback;
  if (w.truncated)
    kind = Errc::truncated;
  else if (w.not_hdf5)
    kind = Errc::not_image;
  else if (w.checksum)
    kind = Errc::corrupt;
  std::string desc = !w.innermost.empty() ? w.innermost : w.outer;
  unsigned long long eof = 0, base = 0, stored = 0;
  if (w.truncated &&
      std::sscanf(desc.c_str(),
                  "truncated file: eof = %llu, sblock->base_addr = %llu, stored_eof = %llu", &eof,
                  &base, &stored) == 3)
    desc = "truncated file: " + std::to_string(eof) + " bytes, HDF5 metadata says it ends at " +
           std::to_string(stored);
  if (kind == Errc::not_image && desc.find("HDF5") == std::string::npos)
    desc = "not an HDF5 file (" + desc + ")";
  throw Error(kind, desc.empty() ? what : what + ": " + desc);
}

Handle file(hid_t id, const std::string& what) {
  return Handle(check_id(id, Errc::io, what), H5Fclose);
}
Handle group(hid_t id, const std::string& what) {
  return Handle(check_id(id, Errc::corrupt, what), H5Gclose);
}
Handle dataset(hid_t id, const std::string& what) {
  return Handle(check_id(id, Errc::corrupt, what), H5Dclose);
}
Handle attribute(hid_t id, const std::string& what) {
  return Handle(check_id(id, Errc::corrupt, what), H5Aclose);
}
Handle datatype(hid_t id, const std::string& what) {
  return Handle(check_id(id, Errc::internal, what), H5Tclose);
}
Handle dataspace(hid_t id, const std::string& what) {
  return Handle(check_id(id, Errc::internal, what), H5Sclose);
}
Handle plist(hid_t id, const std::string& what) {
  return Handle(check_id(id, Errc::internal, what), H5Pclose);
}

Handle vlen_string_type() {
  Handle t = datatype(H5Tcopy(H5T_C_S1), "string type");
  check(H5Tset_size(t.get(), H5T_VARIABLE), Errc::internal, "string type");
  check(H5Tset_cset(t.get(), H5T_CSET_UTF8), Errc::internal, "string type");
  return t;
}

Handle copy_type(hid_t predefined) { return datatype(H5Tcopy(predefined), "type copy"); }

void write_rows(hid_t file, const char* path, hid_t mem_type, const std::byte* rows, size_t n,
                const std::string& what) {
  std::string ctx = what + ": table " + path;
  hsize_t dims[1] = {n};
  Handle space = dataspace(H5Screate_simple(1, dims, nullptr), ctx);
  Handle file_type = datatype(H5Tcopy(mem_type), ctx);
  check(H5Tpack(file_type.get()), Errc::internal, ctx);
  Handle lcpl = plist(H5Pcreate(H5P_LINK_CREATE), ctx);
  check(H5Pset_create_intermediate_group(lcpl.get(), 1), Errc::internal, ctx);
  Handle dcpl = plist(H5Pcreate(H5P_DATASET_CREATE), ctx);
  if (n > 0) {
    // Chunked, through shuffle (by row), LZ4 and Fletcher32: the page index of a big job
    // (hundreds of thousands of runs of ascending addresses) shrinks many times over, and HDF5
    // refuses a damaged table chunk on reading, where contiguous rows carry no checksum at all.
    // An empty table stays contiguous: a chunk needs at least one row.
    const size_t row_size = H5Tget_size(file_type.get());
    hsize_t chunk[1] = {std::min<hsize_t>(n, std::max<size_t>(1, kTableChunkBytes / row_size))};
    check(H5Pset_chunk(dcpl.get(), 1, chunk), Errc::internal, ctx);
    check(H5Pset_shuffle(dcpl.get()), Errc::internal, ctx);
    check(H5Pset_filter(dcpl.get(), lz4::kFilterId, H5Z_FLAG_OPTIONAL, 0, nullptr),
          Errc::internal, ctx);
    check(H5Pset_fletcher32(dcpl.get()), Errc::internal, ctx);
  }
  Handle dset(check_id(H5Dcreate2(file, path, file_type.get(), space.get(), lcpl.get(), dcpl.get(),
                                  H5P_DEFAULT),
                       Errc::io, ctx + ": cannot create"),
              H5Dclose);
  if (n > 0)
    check(H5Dwrite(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, rows), Errc::io,
          ctx + ": cannot write");
}

RowBuffer::~RowBuffer() {
  if (rows > 0 && mem_type && space) {
    if (H5Dvlen_reclaim(mem_type.get(), space.get(), H5P_DEFAULT, bytes.data()) < 0)
      H5Eclear2(H5E_DEFAULT);
  }
}

void read_rows(hid_t file, const char* path, Handle mem_type, size_t row_size,
               const std::byte* default_row, RowBuffer& out, const std::string& what) {
  std::string ctx = what + ": table " + path;
  htri_t exists = H5Lexists(file, path, H5P_DEFAULT);
  // H5Lexists fails (rather than returning 0) when an intermediate group is missing.
  if (exists <= 0) {
    H5Eclear2(H5E_DEFAULT);
    fail(Errc::corrupt, ctx + " is missing");
  }
  Handle dset = dataset(H5Dopen2(file, path, H5P_DEFAULT), ctx + ": cannot open");
  Handle space = dataspace(H5Dget_space(dset.get()), ctx);
  if (H5Sget_simple_extent_ndims(space.get()) != 1) fail(Errc::corrupt, ctx + " is not 1-D");
  hsize_t dims[1] = {0};
  H5Sget_simple_extent_dims(space.get(), dims, nullptr);
  Handle file_type = datatype(H5Dget_type(dset.get()), ctx);
  if (H5Tget_class(file_type.get()) != H5T_COMPOUND)
    fail(Errc::corrupt, ctx + " is not a compound table");
  // The row count comes from the file: bounded before it sizes anything (a forged count would
  // ask for terabytes, or wrap row_size * rows around to a small buffer the rows then overrun).
  // LZ4 expands at most 255-fold, so real rows take no more than a small multiple of the bytes
  // the table has in the file; unallocated chunks read as fill values, hence the constant.
  hsize_t stored = H5Dget_storage_size(dset.get());
  if (dims[0] > (kMaxExpansion * stored + kTableChunkBytes) / row_size)
    fail(Errc::corrupt, ctx + " claims " + std::to_string(dims[0]) + " rows in " +
                            std::to_string(stored) + " stored bytes");
  out.bytes.resize(row_size * dims[0]);
  for (hsize_t i = 0; i < dims[0]; ++i)
    std::memcpy(out.bytes.data() + i * row_size, default_row, row_size);
  out.mem_type = std::move(mem_type);
  if (dims[0] == 0) return;
  check(H5Dread(dset.get(), out.mem_type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.bytes.data()),
        Errc::corrupt, ctx + ": cannot read");
  // From here on the rows own variable-length memory that RowBuffer's destructor frees.
  out.space = std::move(space);
  out.rows = dims[0];
}

void write_attr(hid_t obj, const char* name, const std::string& value, const std::string& what) {
  Handle type = vlen_string_type();
  Handle space = dataspace(H5Screate(H5S_SCALAR), what);
  Handle attr = attribute(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                          what + ": cannot create attribute " + name);
  const char* p = value.c_str();
  check(H5Awrite(attr.get(), type.get(), &p), Errc::io, what + ": cannot write attribute " + name);
}

bool read_attr(hid_t obj, const char* name, std::string& value, const std::string& what) {
  std::string ctx = what + ": attribute " + name;
  htri_t exists = H5Aexists(obj, name);
  check(exists, Errc::corrupt, ctx);
  if (exists == 0) return false;
  Handle attr = attribute(H5Aopen(obj, name, H5P_DEFAULT), ctx);
  Handle ft = datatype(H5Aget_type(attr.get()), ctx);
  if (H5Tget_class(ft.get()) != H5T_STRING) fail(Errc::corrupt, ctx + " is not a string");
  Handle space = dataspace(H5Aget_space(attr.get()), ctx);
  if (H5Sget_simple_extent_npoints(space.get()) != 1) fail(Errc::corrupt, ctx + " is not scalar");
  htri_t variable = H5Tis_variable_str(ft.get());
  check(variable, Errc::corrupt, ctx);
  if (variable > 0) {
    Handle mt = vlen_string_type();
    char* p = nullptr;
    check(H5Aread(attr.get(), mt.get(), &p), Errc::corrupt, ctx + ": cannot read");
    value = p != nullptr ? p : "";
    if (p != nullptr) H5free_memory(p);
  } else {
    // Fixed-length strings, as other writers of HDF5 attributes often use.
    size_t size = H5Tget_size(ft.get());
    std::string buf(size + 1, '\0');
    Handle mt = datatype(H5Tcopy(H5T_C_S1), ctx);
    check(H5Tset_size(mt.get(), size), Errc::internal, ctx);
    check(H5Tset_strpad(mt.get(), H5T_STR_NULLPAD), Errc::internal, ctx);
    check(H5Aread(attr.get(), mt.get(), buf.data()), Errc::corrupt, ctx + ": cannot read");
    value.assign(buf.c_str());
  }
  return true;
}

}  // namespace crest::storage::h5
