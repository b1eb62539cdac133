// The text commands of `pohmelfsctl servers`, carried by the POHMELFS_IOC_SERVERS ioctl.
#include <charconv>

#include "client/server_set.h"

namespace pohmelfs::client {

Result<std::string> RunServersCommand(ServerSet& set, const std::string& command) {
  std::string verb = command.substr(0, command.find(' '));
  std::string arg = verb.size() < command.size() ? command.substr(verb.size() + 1) : "";
  if (verb == "status") return set.StatusTable();
  if (verb == "wait") {
    unsigned ms = 0;
    auto [end, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), ms);
    if (ec != std::errc() || end != arg.data() + arg.size() || ms > 600000)
      return Status::Error(EINVAL, "wait takes milliseconds (at most 600000)");
    if (!set.WaitAllUp(std::chrono::milliseconds(ms)))
      return Status::Error(ETIMEDOUT, "not every server is up");
    return set.StatusTable();
  }
  if (arg.empty()) return Status::Error(EINVAL, "unknown command or missing argument: " + command);
  if (verb == "add" || verb == "set") {
    auto spec = ParseReplicaSpec(arg);
    if (!spec.ok()) return spec.status();
    POHMELFS_RETURN_IF_ERROR(verb == "add" ? set.Add(*spec) : set.Update(*spec));
    return verb + " " + spec->ToString() + ": ok\n";
  }
  if (verb == "remove" || verb == "heal" || verb == "resolve") {
    auto spec = ParseReplicaSpec(arg);  // normalises the URI the way the set stores it
    if (!spec.ok()) return spec.status();
    Status s = verb == "remove" ? set.Remove(spec->uri)
               : verb == "heal" ? set.Heal(spec->uri)
                                : set.Resolve(spec->uri);
    POHMELFS_RETURN_IF_ERROR(s);
    return verb + " " + spec->uri + ": ok\n";
  }
  return Status::Error(EINVAL, "unknown command: " + verb);
}

}  // namespace pohmelfs::client
