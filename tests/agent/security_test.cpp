// Who may do what: every request is checked against the caller's uid (SO_PEERCRED). A second,
// unprivileged user is made for the test (and removed again if the test made it).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "agent/crestd/protocol.h"
#include "core/util/error.h"
#include "tests/agent/harness.h"

namespace crest::agent_test {
namespace {

std::vector<std::string> entries_of(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    out.push_back(e.path().filename());
  return out;
}

// The error kind crestd answers `req` with, asked as whoever runs this; "" when it succeeds.
std::string error_of(const std::string& socket, const json& req) {
  try {
    agent::Client::connect(socket).call(req, {}, 60000);
    return "";
  } catch (const Error& e) {
    return std::string(kind_name(e.kind()));
  }
}

TEST(Security, AnotherUserCannotTouchAJobOrItsImages) {
  TestUser user;
  ASSERT_TRUE(user.ok) << "cannot make an unprivileged user " << user.name;
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir);
  d.start();

  // Root's job, with a checkpoint.
  std::string out = dir / "root.out";
  pid_t root_job = spawn({testjob_bin(), "-n", "1000000", "-m", "50"}, output_to(out));
  reaper.add(root_job);
  ASSERT_TRUE(wait_until([&] { return file_contains(out, "step 1\n"); }, 10s));
  json job = d.call({{"op", "register"}, {"pid", root_job}, {"every", "1h"}})["job"];
  std::string id = job["id"];
  d.call({{"op", "checkpoint"}, {"job", id}});
  std::string images = d.status(id)["dir"];
  std::string latest = images + "/" + d.status(id)["last_checkpoint"]["name"].get<std::string>();

  json seen = as_user(user.uid, user.gid, [&] {
    json r;
    std::string s = d.socket;
    r["hello_uid"] = agent::Client::connect(s).call({{"op", "hello"}})["uid"];
    r["jobs"] = agent::Client::connect(s).call({{"op", "jobs"}})["jobs"].size();
    for (const char* op : {"status", "checkpoint", "pause", "resume", "forget", "restore", "watch"})
      r[op] = error_of(s, {{"op", op}, {"job", id}});
    r["signal"] = error_of(s, {{"op", "signal"}, {"job", id}, {"signal", 15}});
    r["register_root_pid"] = error_of(s, {{"op", "register"}, {"pid", root_job}});
    r["register_crestd"] = error_of(s, {{"op", "register"}, {"pid", d.pid()}});
    // The images themselves: unreadable, and the directory closed.
    int fd = ::open(latest.c_str(), O_RDONLY);
    r["open_image_errno"] = fd < 0 ? errno : 0;
    if (fd >= 0) ::close(fd);
    r["list_images_errno"] = ::access(images.c_str(), R_OK | X_OK) == 0 ? 0 : errno;
    // Nor can they have crestd write images for them somewhere that is not theirs.
    r["dir_elsewhere"] = error_of(s, {{"op", "register"}, {"pid", ::getpid()}, {"dir", "/etc/crest-x"}});
    return r;
  });
  ASSERT_FALSE(seen.contains("exception")) << seen.dump(2);
  EXPECT_EQ(seen["hello_uid"], user.uid);
  EXPECT_EQ(seen["jobs"], 0) << "another user's job is listed";
  for (const char* op : {"status", "checkpoint", "pause", "resume", "forget", "restore", "watch",
                         "signal"})
    EXPECT_EQ(seen[op], "refused") << op << ": " << seen.dump(2);
  EXPECT_EQ(seen["register_root_pid"], "refused") << seen.dump(2);
  EXPECT_EQ(seen["register_crestd"], "refused") << seen.dump(2);
  EXPECT_EQ(seen["open_image_errno"], EACCES);
  EXPECT_EQ(seen["list_images_errno"], EACCES);
  EXPECT_EQ(seen["dir_elsewhere"], "refused") << seen.dump(2);
  // Root's job is untouched.
  json st = d.status(id);
  EXPECT_FALSE(st["paused"].get<bool>());
  EXPECT_EQ(st["state"], "running");
  struct stat sb {};
  ASSERT_EQ(::stat(latest.c_str(), &sb), 0);
  EXPECT_EQ(sb.st_mode & 0777, 0600u);
}

TEST(Security, AUsersJobRunsAsThemAndItsImagesAreTheirs) {
  TestUser user;
  ASSERT_TRUE(user.ok);
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir);
  d.start();
  std::string out = dir / "user.out";
  // The user's output file, in a directory of theirs.
  std::string home = dir / "home";
  ::mkdir(home.c_str(), 0700);
  ASSERT_EQ(::chown(home.c_str(), user.uid, user.gid), 0);
  std::string user_out = home + "/job.out";

  json r = as_user(user.uid, user.gid, [&] {
    int in = ::open("/dev/null", O_RDONLY);
    int fo = ::open(user_out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    json req = {{"op", "run"}, {"argv", {testjob_bin(), "-n", "1000000", "-m", "50"}},
                {"cwd", home}, {"env", {"PATH=/usr/bin:/bin"}}, {"every", "1h"},
                {"watch", false}, {"transient", false}};
    json reply = agent::Client::connect(d.socket).call(req, {in, fo, fo}, 60000);
    std::string id = reply["job"]["id"];
    json ck = agent::Client::connect(d.socket).call({{"op", "checkpoint"}, {"job", id}}, {}, 60000);
    return json{{"job", reply["job"]}, {"checkpoint", ck}};
  });
  ASSERT_FALSE(r.contains("exception")) << r.dump(2);
  json job = r["job"];
  pid_t init = job["pid"];
  reaper.add(init);
  EXPECT_EQ(job["uid"], user.uid);
  // crest-init and the job run with the user's credentials, not root's.
  EXPECT_EQ(proc_field(init, "Uid").substr(0, proc_field(init, "Uid").find('\t')),
            std::to_string(user.uid));
  ASSERT_TRUE(wait_until([&] { return !children_of(init).empty(); }, 10s));
  pid_t child = children_of(init).front();
  EXPECT_EQ(proc_field(child, "Uid").substr(0, proc_field(child, "Uid").find('\t')),
            std::to_string(user.uid));
  // Its images are the user's, 0600, in a 0700 directory of theirs.
  std::string images = job["dir"];
  struct stat sb {};
  ASSERT_EQ(::stat(images.c_str(), &sb), 0);
  EXPECT_EQ(sb.st_uid, user.uid);
  EXPECT_EQ(sb.st_mode & 0777, 0700u);
  std::string ckpt = images + "/" + r["checkpoint"]["checkpoint"].get<std::string>();
  ASSERT_EQ(::stat(ckpt.c_str(), &sb), 0);
  EXPECT_EQ(sb.st_uid, user.uid);
  EXPECT_EQ(sb.st_mode & 0777, 0600u);
  // Root sees and may act on every user's job.
  EXPECT_EQ(d.call({{"op", "jobs"}})["jobs"].size(), 1u);
}

// A user owns their images and can rewrite them; crestd restores as root. An image edited to
// bring the job back as root is refused, by name, and nothing runs.
TEST(Security, AnEditedImageIsNotRestoredWithMoreThanItsUserMay) {
  TestUser user;
  ASSERT_TRUE(user.ok);
  TempDir dir;
  Reaper reaper;  // ends what the test started, after crestd has let go of it
  Daemon d(dir);
  d.start();
  std::string home = dir / "home";
  ::mkdir(home.c_str(), 0700);
  ASSERT_EQ(::chown(home.c_str(), user.uid, user.gid), 0);
  std::string user_out = home + "/job.out";

  // The user's job, checkpointed; no automatic restore, so the restores below are requests.
  json r = as_user(user.uid, user.gid, [&] {
    int in = ::open("/dev/null", O_RDONLY);
    int fo = ::open(user_out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    json req = {{"op", "run"}, {"argv", {testjob_bin(), "-n", "1000000", "-m", "50"}},
                {"cwd", home}, {"env", {"PATH=/usr/bin:/bin"}}, {"every", "1h"},
                {"auto_restore", 0}, {"watch", false}, {"transient", false}};
    json reply = agent::Client::connect(d.socket).call(req, {in, fo, fo}, 60000);
    std::string id = reply["job"]["id"];
    json ck = agent::Client::connect(d.socket).call({{"op", "checkpoint"}, {"job", id}}, {}, 60000);
    return json{{"job", reply["job"]}, {"checkpoint", ck}};
  });
  ASSERT_FALSE(r.contains("exception")) << r.dump(2);
  std::string id = r["job"]["id"];
  pid_t init = r["job"]["pid"];
  reaper.add(init);
  std::string ckpt = r["job"]["dir"].get<std::string>() + "/" +
                     r["checkpoint"]["checkpoint"].get<std::string>();
  auto kill_job = [&] {
    ASSERT_TRUE(wait_until([&] { return !children_of(init).empty(); }, 10s));
    ::kill(children_of(init).front(), SIGKILL);
    ASSERT_TRUE(wait_until([&] { return d.status(id)["state"] == "failed"; }, 30s))
        << d.status(id).dump(2);
  };
  auto restore_as_user = [&] {
    return as_user(user.uid, user.gid, [&] {
      try {
        json rep = agent::Client::connect(d.socket).call({{"op", "restore"}, {"job", id}}, {}, 60000);
        return json{{"pid", rep["pid"]}};
      } catch (const Error& e) {
        return json{{"kind", kind_name(e.kind())}, {"message", e.what()}};
      }
    });
  };

  // Untouched, the user's own image restores.
  kill_job();
  json ok = restore_as_user();
  ASSERT_TRUE(ok.contains("pid")) << ok.dump(2);
  init = ok["pid"];
  reaper.add(init);
  EXPECT_EQ(proc_field(init, "Uid").substr(0, proc_field(init, "Uid").find('\t')),
            std::to_string(user.uid));

  // The user rewrites the uids in their image to 0 (with stock h5py: nothing crest offers).
  kill_job();
  json edit = as_user(user.uid, user.gid, [&] {
    std::string cmd = "/usr/bin/python3 -c \"import h5py, sys\n"
                      "f = h5py.File(sys.argv[1], 'r+')\n"
                      "a = f['processes'][...]\n"
                      "for k in ('uid', 'euid', 'suid', 'fsuid'): a[k] = 0\n"
                      "f['processes'][...] = a\n\" " + ckpt;
    return json{{"status", std::system(cmd.c_str())}};
  });
  ASSERT_EQ(edit["status"], 0) << edit.dump(2);
  json refused = restore_as_user();
  EXPECT_EQ(refused["kind"], "refused") << refused.dump(2);
  EXPECT_NE(refused["message"].get<std::string>().find("as uid 0"), std::string::npos)
      << refused.dump(2);
  EXPECT_NE(d.status(id)["state"], "running");
  EXPECT_TRUE(wait_until([&] { return file_contains(d.log, "restore failed"); }, 5s)) << read_text(d.log);
}

// crest snapshot through crestd: a user snapshots their own tree into their own directory (the
// images theirs), and nothing of anyone else's: not a tree, not a job, not a directory; the node
// metrics they see hold their own jobs only.
TEST(Security, SnapshotsAreTheUsersOwn) {
  TestUser user;
  ASSERT_TRUE(user.ok) << "cannot make an unprivileged user " << user.name;
  TempDir dir;
  Reaper reaper;
  Daemon d(dir);
  d.start();
  pid_t root_tree = spawn({testjob_bin(), "-n", "1000000", "-m", "50", "-M", "2"});
  reaper.add(root_tree);
  pid_t root_job_pid = spawn({testjob_bin(), "-n", "1000000", "-m", "50", "-M", "2"});
  reaper.add(root_job_pid);
  std::string id = d.call({{"op", "register"}, {"pid", root_job_pid}, {"every", "never"}})["job"]["id"];
  ASSERT_TRUE(d.call({{"op", "checkpoint"}, {"job", id}}).value("ok", false));

  std::string home = dir / "user-home";
  ASSERT_EQ(::mkdir(home.c_str(), 0755), 0);
  ASSERT_EQ(::chown(home.c_str(), user.uid, user.gid), 0);
  SpawnOptions as_them;
  as_them.uid = user.uid;
  as_them.gid = user.gid;
  pid_t theirs = spawn({testjob_bin(), "-n", "1000000", "-m", "50", "-M", "2"}, as_them);
  reaper.add(theirs);
  ASSERT_TRUE(wait_until([&] { return proc_field(theirs, "Uid").rfind(std::to_string(user.uid), 0) == 0; }, 10s));

  json seen = as_user(user.uid, user.gid, [&] {
    json r;
    std::string s = d.socket;
    r["root_tree"] = error_of(s, {{"op", "snapshot"}, {"pid", root_tree}, {"dir", home + "/a"}});
    r["root_job_pid"] = error_of(s, {{"op", "snapshot"}, {"pid", root_job_pid}, {"dir", home + "/b"}});
    r["root_job"] = error_of(s, {{"op", "snapshot"}, {"job", id}});
    r["dir_elsewhere"] = error_of(s, {{"op", "snapshot"}, {"pid", theirs}, {"dir", "/etc/crest-x"}});
    r["own"] = error_of(s, {{"op", "snapshot"}, {"pid", theirs}, {"dir", home + "/snaps"}, {"keep", 2}});
    r["metrics"] = agent::Client::connect(s).call({{"op", "metrics"}})["text"];
    return r;
  });
  ASSERT_FALSE(seen.contains("exception")) << seen.dump(2);
  EXPECT_EQ(seen["root_tree"], "refused") << seen.dump(2);
  EXPECT_EQ(seen["root_job_pid"], "refused") << seen.dump(2);
  EXPECT_EQ(seen["root_job"], "refused") << seen.dump(2);
  EXPECT_EQ(seen["dir_elsewhere"], "refused") << seen.dump(2);
  EXPECT_EQ(seen["own"], "") << seen.dump(2);
  std::string metrics = seen["metrics"];
  EXPECT_EQ(metrics.find("job=\"" + id + "\""), std::string::npos) << "root's job shown: " << metrics;
  EXPECT_NE(metrics.find("uid=\"" + std::to_string(user.uid) + "\""), std::string::npos) << metrics;
  // Their snapshot is theirs.
  struct stat sb {};
  ASSERT_EQ(::stat((home + "/snaps/ckpt-000001.h5").c_str(), &sb), 0);
  EXPECT_EQ(sb.st_uid, user.uid);
  EXPECT_EQ(sb.st_mode & 0777, 0600u);
  EXPECT_EQ(::access((home + "/a").c_str(), F_OK), -1) << "nothing made for a refused snapshot";
  const json jobs = d.call({{"op", "jobs"}})["jobs"];  // not a loop over a temporary's member
  for (auto& j : jobs)
    if (j["pid"] == theirs) d.call({{"op", "forget"}, {"job", j["id"]}});
}

// What crestd answers `req` with, asked as whoever runs this: {"ok": reply} or the error's kind
// and message.
json outcome_of(const std::string& socket, const json& req) {
  try {
    return {{"ok", agent::Client::connect(socket).call(req, {}, 60000)}};
  } catch (const Error& e) {
    return {{"kind", kind_name(e.kind())}, {"message", e.what()}};
  }
}

uid_t owner_of(const std::string& path) {
  struct stat sb {};
  return ::lstat(path.c_str(), &sb) == 0 ? sb.st_uid : static_cast<uid_t>(-1);
}

// crestd writes a user's images as root: never where a link or a directory someone else can
// change would send it. Each refusal names the component and why; the places those paths lead
// to stay untouched. A directory crestd accepted stays the one it writes to, whatever becomes of
// the path's names later.
TEST(Security, ImagesGoOnlyWhereNoOtherUserCanRedirectThem) {
  TestUser user;
  ASSERT_TRUE(user.ok) << "cannot make an unprivileged user " << user.name;
  TempDir dir;
  Reaper reaper;
  Daemon d(dir);
  d.start();
  SpawnOptions as_them;
  as_them.uid = user.uid;
  as_them.gid = user.gid;
  pid_t job = spawn({testjob_bin(), "-n", "1000000", "-m", "50", "-M", "2"}, as_them);
  reaper.add(job);
  ASSERT_TRUE(wait_until(
      [&] { return proc_field(job, "Uid").rfind(std::to_string(user.uid), 0) == 0; }, 10s));

  // Root's places the user must not reach: a directory, with one inside it the user happens to
  // own (as a user's directory below /var/spool would be).
  const std::string victim = dir / "victim";
  ASSERT_EQ(::mkdir(victim.c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((victim + "/imgs").c_str(), 0700), 0);
  ASSERT_EQ(::chown((victim + "/imgs").c_str(), user.uid, user.gid), 0);
  const std::string home = dir / "home";
  ASSERT_EQ(::mkdir(home.c_str(), 0755), 0);
  ASSERT_EQ(::chown(home.c_str(), user.uid, user.gid), 0);

  json seen = as_user(user.uid, user.gid, [&] {
    json r;
    auto reg = [&](const std::string& images) {
      return outcome_of(d.socket,
                        {{"op", "register"}, {"pid", job}, {"every", "1h"}, {"dir", images}});
    };
    // The images directory itself a link, and a link as a parent component.
    (void)!::symlink((victim + "/imgs").c_str(), (home + "/last").c_str());
    r["link_last"] = reg(home + "/last");
    (void)!::symlink(victim.c_str(), (home + "/mid").c_str());
    r["link_mid"] = reg(home + "/mid/imgs");
    // A directory of theirs that everyone may write: another user could swap its entries.
    ::mkdir((home + "/open").c_str(), 0777);
    ::chmod((home + "/open").c_str(), 0777);
    r["others_write"] = reg(home + "/open/imgs");
    return r;
  });
  ASSERT_FALSE(seen.contains("exception")) << seen.dump(2);
  for (const char* c : {"link_last", "link_mid", "others_write"})
    EXPECT_EQ(seen[c].value("kind", "ok"), "refused") << c << ": " << seen[c].dump(2);
  EXPECT_NE(seen["link_mid"]
                .value("message", "")
                .find(home + "/mid is a symbolic link owned by uid " + std::to_string(user.uid)),
            std::string::npos)
      << seen["link_mid"].dump(2);
  EXPECT_NE(
      seen["others_write"].value("message", "").find("is writable by other users (mode 0777)"),
      std::string::npos)
      << seen["others_write"].dump(2);
  EXPECT_TRUE(entries_of(victim + "/imgs").empty()) << "crestd wrote through a link";

  // Root registering the user's job: a directory of a third user is refused too; a directory in
  // a sticky one (/tmp) and a link root made in a directory of root's are fine.
  const std::string other = dir / "other";
  ASSERT_EQ(::mkdir(other.c_str(), 0700), 0);
  ASSERT_EQ(::chown(other.c_str(), 65534, 65534), 0);
  json third =
      outcome_of(d.socket, {{"op", "register"}, {"pid", job}, {"every", "1h"}, {"dir", other}});
  EXPECT_EQ(third.value("kind", "ok"), "refused") << third.dump(2);
  EXPECT_NE(third.value("message", "").find(other + " belongs to uid 65534"), std::string::npos)
      << third.dump(2);
  EXPECT_EQ(owner_of(other), 65534u) << "crestd took the directory from its owner";
  const std::string sticky = dir / "sticky";
  ASSERT_EQ(::mkdir(sticky.c_str(), 0777), 0);
  ASSERT_EQ(::chmod(sticky.c_str(), 01777), 0);
  ASSERT_EQ(::mkdir((dir / "rootimgs").c_str(), 0755), 0);
  ASSERT_EQ(::symlink((dir / "rootimgs").c_str(), (dir / "rootlink").c_str()), 0);
  for (const std::string& fine : {sticky + "/imgs", dir / "rootlink/imgs"}) {
    json ok =
        outcome_of(d.socket, {{"op", "register"}, {"pid", job}, {"every", "1h"}, {"dir", fine}});
    ASSERT_TRUE(ok.contains("ok")) << fine << ": " << ok.dump(2);
    d.call({{"op", "forget"}, {"job", ok["ok"]["job"]["id"]}});
  }

  // Accepted, then the user turns a parent of the directory into a link to root's place: the
  // checkpoints still go where crestd was told, and nothing of root's changes hands.
  ASSERT_EQ(::mkdir((home + "/a").c_str(), 0755), 0);
  ASSERT_EQ(::chown((home + "/a").c_str(), user.uid, user.gid), 0);
  json swapped = as_user(user.uid, user.gid, [&] {
    json r;
    json reg = outcome_of(
        d.socket, {{"op", "register"}, {"pid", job}, {"every", "1h"}, {"dir", home + "/a/imgs"}});
    if (!reg.contains("ok")) return json{{"register", reg}};
    std::string id = reg["ok"]["job"]["id"];
    r["id"] = id;
    r["first"] = outcome_of(d.socket, {{"op", "checkpoint"}, {"job", id}});
    r["rename"] = ::rename((home + "/a").c_str(), (home + "/a.old").c_str());
    r["link"] = ::symlink(victim.c_str(), (home + "/a").c_str());
    r["second"] = outcome_of(d.socket, {{"op", "checkpoint"}, {"job", id}});
    return r;
  });
  ASSERT_TRUE(swapped.contains("id")) << swapped.dump(2);
  EXPECT_TRUE(swapped["first"].contains("ok")) << swapped.dump(2);
  EXPECT_EQ(swapped["rename"], 0);
  EXPECT_EQ(swapped["link"], 0);
  EXPECT_TRUE(swapped["second"].contains("ok")) << swapped.dump(2);
  EXPECT_TRUE(entries_of(victim + "/imgs").empty()) << "crestd followed the new link";
  EXPECT_EQ(owner_of(victim), 0u);
  EXPECT_EQ(::access((home + "/a.old/imgs/ckpt-000002.h5").c_str(), F_OK), 0)
      << "the second checkpoint is not in the directory crestd was given";

  // A hard link the user slipped in under a checkpoint's name (where protected_hardlinks is off)
  // is never given to them with the checkpoints crestd made.
  const std::string secret = dir / "secret";
  { std::ofstream(secret) << "root's\n"; }
  ASSERT_EQ(::link(secret.c_str(), (home + "/a.old/imgs/ckpt-000090.h5").c_str()), 0);
  json third_ck = outcome_of(d.socket, {{"op", "checkpoint"}, {"job", swapped["id"]}});
  EXPECT_TRUE(third_ck.contains("ok")) << third_ck.dump(2);
  EXPECT_EQ(owner_of(secret), 0u) << "crestd gave a hard-linked file of root's to the user";
  struct stat sb {};
  ASSERT_EQ(::stat((home + "/a.old/imgs/ckpt-000002.h5").c_str(), &sb), 0);
  EXPECT_EQ(sb.st_uid, user.uid);
  EXPECT_EQ(sb.st_mode & 0777, 0600u);
  d.call({{"op", "forget"}, {"job", swapped["id"]}});
}

}  // namespace
}  // namespace crest::agent_test
