# Helpers shared by the bench/*/run.sh scripts, which source this file
# (POSIX sh) after changing to the repository root.

# free_port prints a TCP port free on loopback now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT [PID] returns once 127.0.0.1:PORT accepts a connection;
# it fails after 15 s, or at once when PID (the process that should be
# listening) has exited.
wait_port() {
	i=0
	until python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2).close()" 2>/dev/null; do
		i=$((i + 1))
		if [ -n "${2:-}" ]; then kill -0 "$2" 2>/dev/null || return 1; fi
		[ $i -lt 150 ] || return 1
		sleep 0.1
	done
}

# now prints the time in seconds, with nanoseconds.
now() { date +%s.%N; }

# median prints the median of the numbers on stdin, one per line.
median() { sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
