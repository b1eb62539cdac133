/* ioctls on a directory of a POHMELFS mount: the two tree operations that travel as one
 * network command each (pohmelfsctl rmtree / mkpath), and the control channel of the mount's
 * server set (pohmelfsctl servers). Root only. */
#ifndef POHMELFS_IOCTL_H
#define POHMELFS_IOCTL_H

#include <linux/ioctl.h>

struct pohmelfs_ioc_path {
  char path[4096]; /* NUL-terminated: a name (RMTREE) or a relative path (MKPATH) */
};

#define POHMELFS_IOC_RMTREE _IOW('P', 1, struct pohmelfs_ioc_path)
#define POHMELFS_IOC_MKPATH _IOW('P', 2, struct pohmelfs_ioc_path)

/* In: a NUL-terminated command ("status", "add SERVER", "remove URI", "set SERVER",
 * "heal URI", "resolve URI", "wait MS"). Out: NUL-terminated text (a table, or a message). */
struct pohmelfs_ioc_ctl {
  char text[8192];
};
#define POHMELFS_IOC_SERVERS _IOWR('P', 3, struct pohmelfs_ioc_ctl)

#endif
