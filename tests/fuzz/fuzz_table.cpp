// Each table decoder (h5::read_table of every table of storage/schema.h, the page index, chunk
// table and page hashes included): rows of any values, written by a writer that left out some
// columns or stored some in a narrower integer type (an older crest, another tool), read back.
// Every column written whole reads back exactly, every column left out reads as the schema's
// default, and nothing crashes or leaks HDF5's variable-length memory into freed rows.
#include <fuzzer/FuzzedDataProvider.h>
#include <hdf5.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <tuple>
#include <vector>

#include "storage/h5_util.h"

namespace {

using namespace crest;
namespace h5 = crest::storage::h5;
using h5::Handle;

template <class M>
void fill(M& v, FuzzedDataProvider& in) {
  if constexpr (std::is_integral_v<M>) {
    v = in.ConsumeIntegral<M>();
  } else if constexpr (std::is_same_v<M, std::string>) {
    // Strings are C strings (paths, names from the kernel): no NUL inside.
    v = in.ConsumeRandomLengthString(48);
    std::erase(v, '\0');
  } else if constexpr (requires { v.push_back(v[0]); }) {  // std::vector<E>
    v.resize(in.ConsumeIntegralInRange<size_t>(0, 12));
    for (auto& e : v) e = in.ConsumeIntegral<typename M::value_type>();
  } else {  // std::array<E, N>
    for (auto& e : v) e = in.ConsumeIntegral<typename M::value_type>();
  }
}

// The narrower integer type a column of native type `t` may be written as; -1 if none.
hid_t narrower(hid_t t) {
  if (H5Tget_class(t) != H5T_INTEGER || H5Tget_size(t) < 2) return -1;
  return H5Tget_sign(t) == H5T_SGN_NONE ? H5T_NATIVE_UINT8 : H5T_NATIVE_INT8;
}

template <class T>
void one_table(FuzzedDataProvider& in) {
  static const h5::RowCodec<T> codec;
  constexpr auto kFields = schema::Table<T>::fields();
  constexpr size_t kCount = std::tuple_size_v<decltype(kFields)>;
  uint64_t dropped = in.ConsumeIntegral<uint64_t>() & in.ConsumeIntegral<uint64_t>();
  uint64_t narrowed = in.ConsumeIntegral<uint64_t>() & in.ConsumeIntegral<uint64_t>();
  std::vector<T> rows(in.ConsumeIntegralInRange<size_t>(0, 6));
  for (auto& r : rows)
    std::apply([&](const auto&... f) { (fill(r.*(f.member), in), ...); }, kFields);

  Handle fapl = h5::plist(H5Pcreate(H5P_FILE_ACCESS), "fapl");
  if (H5Pset_fapl_core(fapl.get(), 1 << 16, 0) < 0) std::abort();
  Handle file = h5::file(H5Fcreate("fuzz-table.h5", H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()),
                         "fuzz-table.h5");
  // The writer's row type: crest's, minus the dropped columns, with some narrowed.
  Handle mem = codec.memory_type();
  Handle written = h5::datatype(H5Tcreate(H5T_COMPOUND, codec.row_size()), "compound");
  bool any = false;
  for (unsigned i = 0; i < kCount; ++i) {
    if (dropped >> (i % 64) & 1) continue;
    Handle ft = h5::datatype(H5Tget_member_type(mem.get(), i), "member");
    char* name = H5Tget_member_name(mem.get(), i);
    hid_t narrow = narrower(ft.get());
    hid_t use = (narrowed >> (i % 64) & 1) && narrow >= 0 ? narrow : ft.get();
    if (H5Tinsert(written.get(), name, H5Tget_member_offset(mem.get(), i), use) < 0) std::abort();
    H5free_memory(name);
    any = true;
  }
  std::vector<std::byte> packed(codec.row_size() * rows.size());
  for (size_t i = 0; i < rows.size(); ++i) codec.pack(rows[i], packed.data() + i * codec.row_size());
  std::vector<T> back;
  try {
    if (!any) return;  // HDF5 refuses a compound type without members
    h5::write_rows(file.get(), schema::Table<T>::name, written.get(), packed.data(), rows.size(),
                   "fuzz");
    h5::read_table(file.get(), back, "fuzz");
  } catch (const Error& e) {
    std::abort();  // a table any writer could make must read
  }
  if (back.size() != rows.size()) std::abort();
  static const T defaults{};
  for (size_t r = 0; r < rows.size(); ++r) {
    size_t i = 0;
    std::apply(
        [&](const auto&... f) {
          (
              [&] {
                bool drop = dropped >> (i % 64) & 1, narrow = narrowed >> (i % 64) & 1;
                ++i;
                if (drop) {
                  if (!(back[r].*(f.member) == defaults.*(f.member))) std::abort();
                } else if (!narrow || !std::is_integral_v<std::remove_cvref_t<decltype(rows[r].*(f.member))>>) {
                  if (!(back[r].*(f.member) == rows[r].*(f.member))) std::abort();
                }
              }(),
              ...);
        },
        kFields);
  }
}

template <class... T>
void dispatch(unsigned which, FuzzedDataProvider& in) {
  unsigned i = 0;
  ((i++ == which ? one_table<T>(in) : void()), ...);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  h5::init();
  FuzzedDataProvider in(data, size);
  using namespace crest::schema;
  dispatch<ProcessRecord, ThreadRecord, SigactionRecord, SignalRecord, VmaRecord, FileRecord,
           FdRecord, PipeRecord, OwnerRecord, SeccompRecord, TimerRecord, LockRecord, AioRecord,
           GuardRecord, EpollRecord, InotifyRecord, SocketRecord, SocketQueueRecord, TcpRecord,
           MqMessageRecord, SysvRecord, SysvMessageRecord, SysvLimitRecord, PtyRecord, PageRun,
           ChunkRecord, PageHash>(in.ConsumeIntegralInRange<unsigned>(0, 26), in);
  return 0;
}
