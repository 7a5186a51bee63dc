# MariaDB (Debian's mariadb-server) for one environment's Keystone and Barbican databases.
# The system tables are made at build time, so a container serves in about a second;
# the harness user, its password and the databases come from an --init-file written
# per environment (the password is a per-environment secret, never in the image).
# A 16 MB redo log (default 96 MB) keeps the image small and the first write in a
# container cheap (copy-up of the log file).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
LABEL barbican-harness.image=mariadb
ARG RUNTIME_PACKAGES="mariadb-server"
COPY apt-install.sh /usr/local/sbin/harness-apt-install
COPY debs/runtime/ /tmp/debs/
RUN sh /usr/local/sbin/harness-apt-install /tmp/debs $RUNTIME_PACKAGES \
 && mariadb-install-db --datadir=/var/lib/harness-mariadb --user=root --skip-test-db \
        --auth-root-authentication-method=socket --innodb-log-file-size=16M > /dev/null \
 && mkdir -p /run/mysqld
EXPOSE 3306
# The harness passes its own command line (harness/providers/docker.py); this default is
# for a person trying the image by hand.
CMD ["mariadbd", "--no-defaults", "--datadir=/var/lib/harness-mariadb", "--user=root", \
     "--port=3306", "--bind-address=0.0.0.0", "--skip-name-resolve", "--innodb-log-file-size=16M"]
