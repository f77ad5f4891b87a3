// The generic compound-table mapping on its own: a table written before a column existed reads
// back with that column at its schema default (old images stay readable when the schema grows),
// and columns the reader does not know are ignored.
#include <hdf5.h>

#include "storage/h5_util.h"
#include "tests/storage/test_util.h"

namespace crest::test {
namespace {

namespace h5 = storage::h5;

TEST(H5Table, MissingColumnsTakeTheirDefaultsAndUnknownOnesAreIgnored) {
  TempDir dir;
  std::string path = dir.path() + "/old.h5";
  h5::init();
  {
    // An "old" files table: id, a path, and a column this crest does not know.
    struct Old {
      int64_t id;
      char* path;
      int32_t future;
    };
    h5::Handle f = h5::file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), path);
    h5::Handle str = h5::vlen_string_type();
    h5::Handle t = h5::datatype(H5Tcreate(H5T_COMPOUND, sizeof(Old)), path);
    H5Tinsert(t.get(), "id", HOFFSET(Old, id), H5T_NATIVE_INT64);
    H5Tinsert(t.get(), "path", HOFFSET(Old, path), str.get());
    H5Tinsert(t.get(), "future", HOFFSET(Old, future), H5T_NATIVE_INT32);
    char p0[] = "/etc/hosts", p1[] = "";
    Old rows[2] = {{3, p0, 7}, {4, p1, 8}};
    h5::write_rows(f.get(), "files", t.get(), reinterpret_cast<const std::byte*>(rows), 2, path);
  }
  h5::Handle f = h5::file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), path);
  std::vector<schema::FileRecord> files;
  h5::read_table(f.get(), files, path);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].id, 3);
  EXPECT_EQ(files[0].path, "/etc/hosts");
  EXPECT_EQ(files[1].id, 4);
  EXPECT_EQ(files[1].path, "");
  for (const auto& r : files) {
    EXPECT_EQ(r.pipe_id, -1);  // schema defaults, not zero
    EXPECT_EQ(r.inherited_fd, -1);
    EXPECT_EQ(r.kind, 0u);
  }
  // A table that is not there at all is a named corruption, not a crash.
  std::vector<schema::PipeRecord> pipes;
  Error e = expect_error([&] { h5::read_table(f.get(), pipes, path); });
  EXPECT_EQ(e.kind(), Errc::corrupt);
  EXPECT_NE(std::string(e.what()).find("pipes"), std::string::npos) << e.what();
}

}  // namespace
}  // namespace crest::test
