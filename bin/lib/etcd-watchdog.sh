# Runs an etcd member that dies with the process that started it (the test runner or the
# drill): `sh etcd-watchdog.sh PARENT_PID /usr/bin/etcd ARGS...`. `$$` is this shell, which
# becomes etcd at `exec`; the subshell kills it when PARENT_PID is gone, after checking that
# the pid still names an etcd (never a recycled pid); it ends by itself when etcd is gone.
# Used by Tests/LorikeetTestSupport/EtcdCluster.swift and bin/lib/etcd.py.
parent=$1; shift
( while kill -0 "$parent" 2>/dev/null; do
      read comm 2>/dev/null < /proc/$$/comm || exit 0
      case "$comm" in etcd|sh|dash) ;; *) exit 0 ;; esac
      sleep 0.5
  done
  read comm 2>/dev/null < /proc/$$/comm && [ "$comm" = etcd ] && { kill -CONT $$; kill -KILL $$; } ) &
exec "$@"
