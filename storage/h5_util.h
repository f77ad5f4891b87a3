// HDF5 helpers for the directory backend: an owning hid_t, HDF5 error stacks turned into one-line
// crest::Errors, and compound tables / root attributes built generically from the field lists of
// storage/schema.h. Internal to storage/ (core/ never sees HDF5).
#pragma once

#include <hdf5.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "core/util/error.h"
#include "storage/schema.h"

namespace crest::storage::h5 {

// Silences HDF5's automatic error printing for the calling thread (the library keeps that setting
// per thread in thread-safe builds, and pipeline stages run on any TBB worker) and registers the
// in-process LZ4 filter once. Call before any other HDF5 call on a thread.
void init();

// Registers our implementation of filter 32004 with HDF5 (idempotent).
void register_lz4_filter();

// Owns one HDF5 identifier; closes it with the matching H5?close. Never throws.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) noexcept : id_(id), closer_(closer) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : id_(o.id_), closer_(o.closer_) { o.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_;
      closer_ = o.closer_;
      o.id_ = H5I_INVALID_HID;
    }
    return *this;
  }
  ~Handle() { reset(); }

  hid_t get() const noexcept { return id_; }
  explicit operator bool() const noexcept { return id_ >= 0; }
  void reset() noexcept;
  // Closes now and reports failure (used where a failed close loses data, e.g. the file).
  void close(Errc kind, const std::string& what);

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

// The HDF5 error stack of the calling thread as one line ("most specific description") and the
// crest error kind it implies (truncated, not_image, corrupt) or `fallback`. Clears the stack.
[[noreturn]] void raise(Errc fallback, const std::string& what);

inline hid_t check_id(hid_t id, Errc fallback, const std::string& what) {
  if (id < 0) raise(fallback, what);
  return id;
}
inline void check(herr_t rc, Errc fallback, const std::string& what) {
  if (rc < 0) raise(fallback, what);
}

Handle file(hid_t id, const std::string& what);
Handle group(hid_t id, const std::string& what);
Handle dataset(hid_t id, const std::string& what);
Handle attribute(hid_t id, const std::string& what);
Handle datatype(hid_t id, const std::string& what);
Handle dataspace(hid_t id, const std::string& what);
Handle plist(hid_t id, const std::string& what);

Handle vlen_string_type();  // variable-length UTF-8 string
Handle copy_type(hid_t predefined);

// ---- Column mapping --------------------------------------------------------------------------
// How one C++ member type is laid out in the row buffer handed to HDF5 and which HDF5 type
// describes it: integers as themselves, std::string as char*, std::vector<E> as hvl_t,
// std::array<E,N> as an HDF5 array.

template <class I>
hid_t native_int() {
  static_assert(std::is_integral_v<I>);
  if constexpr (std::is_signed_v<I>) {
    if constexpr (sizeof(I) == 1)
      return H5T_NATIVE_INT8;
    else if constexpr (sizeof(I) == 2)
      return H5T_NATIVE_INT16;
    else if constexpr (sizeof(I) == 4)
      return H5T_NATIVE_INT32;
    else
      return H5T_NATIVE_INT64;
  } else {
    if constexpr (sizeof(I) == 1)
      return H5T_NATIVE_UINT8;
    else if constexpr (sizeof(I) == 2)
      return H5T_NATIVE_UINT16;
    else if constexpr (sizeof(I) == 4)
      return H5T_NATIVE_UINT32;
    else
      return H5T_NATIVE_UINT64;
  }
}

template <class M, class = void>
struct Column;

template <class M>
struct Column<M, std::enable_if_t<std::is_integral_v<M>>> {
  using Mem = M;
  static constexpr bool kPointer = false;
  static Handle type() { return copy_type(native_int<M>()); }
  static void put(const M& v, Mem& m) { m = v; }
  static void get(const Mem& m, M& v) { v = m; }
};

template <>
struct Column<std::string> {
  using Mem = char*;
  static constexpr bool kPointer = true;
  static Handle type() { return vlen_string_type(); }
  // HDF5 only reads through the pointer when writing.
  static void put(const std::string& v, Mem& m) { m = const_cast<char*>(v.c_str()); }
  static void get(const Mem& m, std::string& v) { v = m ? m : ""; }
};

template <class E>
struct Column<std::vector<E>> {
  using Mem = hvl_t;
  static constexpr bool kPointer = true;
  static Handle type() {
    Handle base = copy_type(native_int<E>());
    return datatype(H5Tvlen_create(base.get()), "vlen type");
  }
  static void put(const std::vector<E>& v, Mem& m) {
    m.len = v.size();
    m.p = const_cast<E*>(v.data());
  }
  static void get(const Mem& m, std::vector<E>& v) {
    const E* p = static_cast<const E*>(m.p);
    v.assign(p, p + (p ? m.len : 0));
  }
};

template <class E, size_t N>
struct Column<std::array<E, N>> {
  using Mem = std::array<E, N>;
  static constexpr bool kPointer = false;
  static Handle type() {
    hsize_t dims[1] = {N};
    Handle base = copy_type(native_int<E>());
    return datatype(H5Tarray_create2(base.get(), 1, dims), "array type");
  }
  static void put(const Mem& v, Mem& m) { m = v; }
  static void get(const Mem& m, Mem& v) { v = m; }
};

// Row layout of a table record: every field's Mem at its natural alignment.
template <class T>
class RowCodec {
 public:
  static constexpr auto kFields = schema::Table<T>::fields();
  static constexpr size_t kCount = std::tuple_size_v<decltype(kFields)>;

  RowCodec() {
    size_t off = 0, i = 0;
    std::apply(
        [&](const auto&... f) {
          ((off = place<typename MemberOf<std::remove_cvref_t<decltype(f)>>::type>(off, i++)), ...);
        },
        kFields);
    row_size_ = (off + 7) & ~size_t{7};
  }

  size_t row_size() const { return row_size_; }

  // The compound memory type; the file type is the same, packed.
  Handle memory_type() const {
    Handle t = datatype(H5Tcreate(H5T_COMPOUND, row_size_), "compound type");
    size_t i = 0;
    std::apply(
        [&](const auto&... f) {
          (insert<typename MemberOf<std::remove_cvref_t<decltype(f)>>::type>(t.get(), f.name,
                                                                             offsets_[i++]),
           ...);
        },
        kFields);
    return t;
  }

  void pack(const T& rec, std::byte* row) const {
    size_t i = 0;
    std::apply([&](const auto&... f) { (put_one(rec.*(f.member), row + offsets_[i++]), ...); },
               kFields);
  }

  // A row holding T{}'s values, except that strings and vectors are null: reading a file that
  // lacks a column (written before the column existed) leaves the column's default in place, and
  // HDF5 finds no memory of ours to free in it.
  void pack_default(std::byte* row) const {
    static const T defaults{};
    size_t i = 0;
    std::apply(
        [&](const auto&... f) { (put_default(defaults.*(f.member), row + offsets_[i++]), ...); },
        kFields);
  }

  void unpack(const std::byte* row, T& rec) const {
    size_t i = 0;
    std::apply([&](const auto&... f) { (get_one(row + offsets_[i++], rec.*(f.member)), ...); },
               kFields);
  }

 private:
  template <class F>
  struct MemberOf;
  template <class C, class M>
  struct MemberOf<schema::Field<C, M>> {
    using type = M;
  };

  template <class M>
  size_t place(size_t off, size_t i) {
    using Mem = typename Column<M>::Mem;
    off = (off + alignof(Mem) - 1) & ~(alignof(Mem) - 1);
    offsets_[i] = off;
    return off + sizeof(Mem);
  }

  template <class M>
  static void insert(hid_t compound, const char* name, size_t off) {
    Handle ft = Column<M>::type();
    check(H5Tinsert(compound, name, off, ft.get()), Errc::internal,
          std::string("cannot add column ") + name);
  }

  template <class M>
  static void put_one(const M& v, std::byte* at) {
    typename Column<M>::Mem m{};
    Column<M>::put(v, m);
    std::memcpy(at, &m, sizeof m);
  }

  template <class M>
  static void put_default(const M& v, std::byte* at) {
    typename Column<M>::Mem m{};
    if constexpr (!Column<M>::kPointer) Column<M>::put(v, m);
    std::memcpy(at, &m, sizeof m);
  }

  template <class M>
  static void get_one(const std::byte* at, M& v) {
    typename Column<M>::Mem m{};
    std::memcpy(&m, at, sizeof m);
    Column<M>::get(m, v);
  }

  std::array<size_t, kCount> offsets_{};
  size_t row_size_ = 0;
};

// Writes `rows` as a 1-D compound dataset at `path` (intermediate groups created), chunked and
// filtered (shuffle, LZ4, Fletcher32) unless empty.
void write_rows(hid_t file, const char* path, hid_t mem_type, const std::byte* rows, size_t n,
                const std::string& what);
// Reads a 1-D compound dataset into n rows of `row_size`, each first set to `default_row`;
// columns are matched by name. Errc::corrupt when the dataset is missing or not 1-D.
struct RowBuffer {
  std::vector<std::byte> bytes;
  size_t rows = 0;
  Handle mem_type;
  Handle space;
  ~RowBuffer();  // frees HDF5's variable-length memory inside the rows
};
void read_rows(hid_t file, const char* path, Handle mem_type, size_t row_size,
               const std::byte* default_row, RowBuffer& out, const std::string& what);

template <class T>
void write_table(hid_t file, const std::vector<T>& recs, const std::string& what) {
  static const RowCodec<T> codec;
  std::vector<std::byte> rows(codec.row_size() * recs.size());
  for (size_t i = 0; i < recs.size(); ++i) codec.pack(recs[i], rows.data() + i * codec.row_size());
  Handle mt = codec.memory_type();
  write_rows(file, schema::Table<T>::name, mt.get(), rows.data(), recs.size(), what);
}

template <class T>
void read_table(hid_t file, std::vector<T>& recs, const std::string& what) {
  static const RowCodec<T> codec;
  static const std::vector<std::byte> default_row = [] {
    std::vector<std::byte> row(codec.row_size());
    codec.pack_default(row.data());
    return row;
  }();
  RowBuffer buf;
  read_rows(file, schema::Table<T>::name, codec.memory_type(), codec.row_size(), default_row.data(),
            buf, what);
  recs.assign(buf.rows, T{});
  for (size_t i = 0; i < buf.rows; ++i)
    codec.unpack(buf.bytes.data() + i * codec.row_size(), recs[i]);
}

// ---- Attributes ------------------------------------------------------------------------------

void write_attr(hid_t obj, const char* name, const std::string& value, const std::string& what);
bool read_attr(hid_t obj, const char* name, std::string& value, const std::string& what);

template <class I>
std::enable_if_t<std::is_integral_v<I>> write_attr(hid_t obj, const char* name, I value,
                                                   const std::string& what) {
  Handle space = dataspace(H5Screate(H5S_SCALAR), what);
  Handle attr =
      attribute(H5Acreate2(obj, name, native_int<I>(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                what + ": cannot create attribute " + name);
  check(H5Awrite(attr.get(), native_int<I>(), &value), Errc::io,
        what + ": cannot write attribute " + name);
}

// false when the attribute does not exist; throws when it exists but is not a number.
template <class I>
std::enable_if_t<std::is_integral_v<I>, bool> read_attr(hid_t obj, const char* name, I& value,
                                                        const std::string& what) {
  htri_t exists = H5Aexists(obj, name);
  check(exists, Errc::corrupt, what + ": cannot look up attribute " + name);
  if (exists == 0) return false;
  Handle attr = attribute(H5Aopen(obj, name, H5P_DEFAULT), what + ": attribute " + name);
  Handle ft = datatype(H5Aget_type(attr.get()), what + ": attribute " + name);
  if (H5Tget_class(ft.get()) != H5T_INTEGER)
    fail(Errc::corrupt, what + ": attribute " + name + " is not an integer");
  check(H5Aread(attr.get(), native_int<I>(), &value), Errc::corrupt,
        what + ": cannot read attribute " + name);
  return true;
}

}  // namespace crest::storage::h5
