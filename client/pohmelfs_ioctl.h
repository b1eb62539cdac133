/* ioctls on a directory of a POHMELFS mount, for the two tree operations that travel as one
 * network command each (used by pohmelfsctl rmtree / mkpath). */
#ifndef POHMELFS_IOCTL_H
#define POHMELFS_IOCTL_H

#include <linux/ioctl.h>

struct pohmelfs_ioc_path {
  char path[4096]; /* NUL-terminated: a name (RMTREE) or a relative path (MKPATH) */
};

#define POHMELFS_IOC_RMTREE _IOW('P', 1, struct pohmelfs_ioc_path)
#define POHMELFS_IOC_MKPATH _IOW('P', 2, struct pohmelfs_ioc_path)

#endif
