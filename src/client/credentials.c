/*-------------------------------------------------------------------------
 *
 * credentials.c
 *		The m3ter credentials: from m3ter.credentials_file, else the settings.
 *
 * m3ter.credentials_file names a file that only the server's OS user can
 * read, by PostgreSQL's rule for ssl_key_file: owned by the database user
 * with mode 0600 or less, or owned by root with mode 0640 or less (so that
 * root can let the server's group read it), holding
 *
 *		# m3ter Service User
 *		access_key_id = <Access Key id>
 *		api_secret = <Api Secret>
 *
 * one "key = value" a line; blank lines, lines starting with # and a #
 * comment after a value are ignored; a value may be put in single or
 * double quotes.  When the setting is not empty the file's values are used
 * and m3ter.access_key_id and m3ter.api_secret are ignored, so the secret
 * never passes through SQL text or the server log.
 *
 * The file is read on first use in each process and again after a reload
 * that changes the setting, or when its modification time, size, inode or
 * change time differ from the last read (checked with one stat() a use).
 * Its values live in TopMemoryContext and are wiped when replaced.
 *
 * Nothing here ever puts a credential in a message: errors name the file
 * and the line only.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/base64.h"
#include "common/hashfn.h"
#include "storage/fd.h"
#include "utils/memutils.h"

#include "client/credentials.h"
#include "ground/compat.h"
#include "ground/settings.h"

/* What was read from the file, and how to tell that the file changed */
static bool loaded = false;
static uint32 loaded_generation = 0;
static char *loaded_path = NULL;
static struct stat loaded_stat;
static char *file_key_id = NULL;
static char *file_secret = NULL;

/* Wipe and free a string held in TopMemoryContext */
static void
wipe(char **s)
{
	if (*s != NULL)
	{
		explicit_bzero(*s, strlen(*s));
		pfree(*s);
		*s = NULL;
	}
}

/* Is the credentials file in use? */
static bool
file_in_use(void)
{
	return m3ter_credentials_file != NULL && m3ter_credentials_file[0] != '\0';
}

/* Strip blanks at both ends of s, in place; returns the new start */
static char *
trim(char *s)
{
	char	   *end;

	while (*s == ' ' || *s == '\t')
		s++;
	end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
		*--end = '\0';
	return s;
}

/* Is s blank, or blank and then a # comment? */
static bool
blank_or_comment(const char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	return *s == '\0' || *s == '#';
}

/*
 * The value of a line, in place, as postgresql.conf reads one: in single or
 * double quotes up to the quote that only blanks or a # comment follow; else
 * up to a # after a blank (a # inside a value is kept), trimmed
 */
static char *
line_value(char *value)
{
	char	   *p;

	if (value[0] == '\'' || value[0] == '"')
	{
		for (p = strchr(value + 1, value[0]); p != NULL; p = strchr(p + 1, value[0]))
		{
			if (blank_or_comment(p + 1))
			{
				*p = '\0';
				return value + 1;
			}
		}
	}
	for (p = value; *p != '\0'; p++)
	{
		if (*p == '#' && p > value && (p[-1] == ' ' || p[-1] == '\t'))
		{
			*p = '\0';
			break;
		}
	}
	return trim(value);
}

/* Raise a problem with the credentials file (never with a credential in it) */
static void
bad_file(const char *path, const char *msg, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_CONFIG_FILE_ERROR),
			 errmsg("m3ter credentials file \"%s\" %s", path, msg),
			 detail ? errdetail("%s", detail) : 0,
			 errhint("The file holds the lines \"access_key_id = ...\" and \"api_secret = ...\" and is readable by the server's OS user only: owned by it with mode 0600, or by root with mode 0640 and the server's group.")));
}

/*
 * Raise unless the file's owner and mode are those PostgreSQL requires of
 * ssl_key_file (check_ssl_key_file_permissions): owned by the database user,
 * no group or other access; owned by root, at most group read
 */
static void
check_file_access(const char *path, const struct stat *st)
{
	const char *rule = "It must have permissions u=rw (0600) or less if owned by the database user, "
		"or permissions u=rw,g=r (0640) or less if owned by root, as ssl_key_file must.";

	if (st->st_uid != geteuid() && st->st_uid != 0)
		bad_file(path, "must be owned by the database user or root", rule);
	if (st->st_uid == geteuid() && (st->st_mode & (S_IRWXG | S_IRWXO)) != 0)
		bad_file(path, "has group or world access", rule);
	if (st->st_uid == 0 && (st->st_mode & (S_IWGRP | S_IXGRP | S_IRWXO)) != 0)
		bad_file(path, "has group write or world access", rule);
}

/* Parse the file's text; on success replace the loaded values */
static void
parse_file(const char *path, char *text)
{
	char	   *key_id = NULL;
	char	   *secret = NULL;
	char	   *line = text;
	int			lineno = 0;

	while (line != NULL && *line != '\0')
	{
		char	   *next = strchr(line, '\n');
		char	   *eq;
		char	   *name;
		char	   *value;

		if (next != NULL)
			*next++ = '\0';
		lineno++;
		line = trim(line);
		if (line[0] == '\0' || line[0] == '#')
		{
			line = next;
			continue;
		}
		eq = strchr(line, '=');
		if (eq == NULL)
			bad_file(path, "cannot be read",
					 psprintf("Line %d is not of the form key = value.", lineno));
		*eq = '\0';
		name = trim(line);
		value = line_value(trim(eq + 1));
		if (strcmp(name, "access_key_id") == 0)
			key_id = value;
		else if (strcmp(name, "api_secret") == 0)
			secret = value;
		else
			bad_file(path, "cannot be read",
					 psprintf("Line %d has an unknown key; the file takes access_key_id and api_secret.", lineno));
		line = next;
	}
	if (key_id == NULL || key_id[0] == '\0' || secret == NULL || secret[0] == '\0')
		bad_file(path, "is incomplete",
				 "It must set both access_key_id and api_secret.");

	wipe(&file_key_id);
	wipe(&file_secret);
	file_key_id = MemoryContextStrdup(TopMemoryContext, key_id);
	file_secret = MemoryContextStrdup(TopMemoryContext, secret);
}

/*
 * Read the credentials file if it is new or changed since the last read.
 * Raises when it cannot be used; what was read before is then forgotten, so
 * a broken file never leaves old credentials in use.
 */
static void
read_credentials_file(void)
{
	const char *path = m3ter_credentials_file;
	struct stat st;
	int			fd;
	char	   *text;
	ssize_t		got;

	if (stat(path, &st) != 0)
	{
		int			save_errno = errno;

		loaded = false;
		errno = save_errno;
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("could not access m3ter credentials file \"%s\": %m", path),
				 errhint("Set m3ter.credentials_file to a file the server's OS user can read, or to '' to use the m3ter.access_key_id and m3ter.api_secret settings.")));
	}
	if (loaded && loaded_generation == m3ter_credentials_file_generation && loaded_path != NULL && strcmp(loaded_path, path) == 0 &&
		st.st_mtim.tv_sec == loaded_stat.st_mtim.tv_sec &&
		st.st_mtim.tv_nsec == loaded_stat.st_mtim.tv_nsec &&
		st.st_ctim.tv_sec == loaded_stat.st_ctim.tv_sec &&
		st.st_ctim.tv_nsec == loaded_stat.st_ctim.tv_nsec &&
		st.st_size == loaded_stat.st_size && st.st_ino == loaded_stat.st_ino)
		return;

	loaded = false;
	wipe(&file_key_id);
	wipe(&file_secret);
	if (!S_ISREG(st.st_mode))
		bad_file(path, "is not a regular file", NULL);
	check_file_access(path, &st);
	if (st.st_size > 65536)
		bad_file(path, "is too large", "It holds two short lines.");

	fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (fd < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("could not open m3ter credentials file \"%s\": %m", path)));
	text = palloc0(st.st_size + 1);
	got = read(fd, text, st.st_size);
	if (got < 0)
	{
		int			save_errno = errno;

		CloseTransientFile(fd);
		errno = save_errno;
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("could not read m3ter credentials file \"%s\": %m", path)));
	}
	CloseTransientFile(fd);
	text[got] = '\0';

	PG_TRY();
	{
		parse_file(path, text);
	}
	PG_FINALLY();
	{
		explicit_bzero(text, st.st_size + 1);
		pfree(text);
	}
	PG_END_TRY();

	if (loaded_path != NULL)
		pfree(loaded_path);
	loaded_path = MemoryContextStrdup(TopMemoryContext, path);
	loaded_stat = st;
	loaded = true;
	loaded_generation = m3ter_credentials_file_generation;
}

/* The credentials in use: the file's when it is set, else the settings' */
static void
current_credentials(const char **key_id, const char **secret)
{
	if (file_in_use())
	{
		read_credentials_file();
		*key_id = file_key_id;
		*secret = file_secret;
		return;
	}
	*key_id = m3ter_access_key_id ? m3ter_access_key_id : "";
	*secret = m3ter_api_secret ? m3ter_api_secret : "";
}

/* Raise unless both credentials are set (or the file gives both) */
void
m3ter_require_credentials(void)
{
	const char *key_id;
	const char *secret;

	m3ter_settings_catch_up();
	current_credentials(&key_id, &secret);
	if (key_id[0] == '\0' || secret[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("m3ter credentials are not set"),
				 errdetail("Both m3ter.access_key_id and m3ter.api_secret must be set to obtain a bearer token."),
				 errhint("As a superuser, write them to a file only the server's OS user can read and name it: ALTER SYSTEM SET m3ter.credentials_file = '...'; SELECT pg_reload_conf();")));
}

/*
 * The Authorization header value for the token request:
 * "Basic base64(access_key_id:api_secret)".  The caller wipes and frees it.
 */
char *
m3ter_basic_credentials(void)
{
	const char *key_id;
	const char *secret;
	char	   *pair;
	char	   *header;
	int			pairlen;
	int			enclen;

	m3ter_require_credentials();
	current_credentials(&key_id, &secret);
	pair = psprintf("%s:%s", key_id, secret);
	pairlen = strlen(pair);
	header = palloc(6 + pg_b64_enc_len(pairlen) + 1);
	memcpy(header, "Basic ", 6);
	enclen = pg_b64_encode((const m3ter_b64_byte *) pair, pairlen, header + 6,
						   pg_b64_enc_len(pairlen));
	header[6 + enclen] = '\0';
	explicit_bzero(pair, pairlen);
	pfree(pair);
	return header;
}

/*
 * A hash of the credentials in use (key id and secret), so that a token
 * cache can tell when they changed; never the secret itself.  It does not
 * raise: when the file cannot be read it hashes nothing (0), and the next
 * m3ter_basic_credentials() reports why.  It may read the file, so call it
 * outside any spinlock or LWLock.
 */
uint32
m3ter_credentials_fingerprint(void)
{
	const char *key_id = "";
	const char *secret = "";
	MemoryContext oldcxt = CurrentMemoryContext;

	PG_TRY();
	{
		current_credentials(&key_id, &secret);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		FlushErrorState();
		return 0;
	}
	PG_END_TRY();
	return hash_combine(hash_bytes((const unsigned char *) key_id, strlen(key_id)),
						hash_bytes((const unsigned char *) secret, strlen(secret)));
}
