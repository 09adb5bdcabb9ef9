"""Several pgaurora instances, one acting: leadership and shared memory in etcd."""
