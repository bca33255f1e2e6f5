"""TaskFlow settings: everything comes from the environment (or a `.env` file) through one `environ.Env()`."""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

ENV = env.str("ENV", default="development")
if ENV not in ("development", "production"):
    raise ImproperlyConfigured(f"ENV must be 'development' or 'production', not {ENV!r}.")
PRODUCTION = ENV == "production"

DEBUG = env.bool("DEBUG", default=False)
_DEV_SECRET_KEY = "django-insecure-development-only-key-do-not-use-in-production"  # noqa: S105
SECRET_KEY = env.str("SECRET_KEY", default=_DEV_SECRET_KEY)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[] if PRODUCTION else ["*"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# The seed called it DB_DSN; DATABASE_URL is what Django tooling usually expects.
DEFAULT_DB_DSN = f"sqlite:///{BASE_DIR / 'var' / 'taskflow.sqlite3'}"
DB_DSN = env.str("DB_DSN", default="") or env.str("DATABASE_URL", default="") or DEFAULT_DB_DSN

if PRODUCTION:
    problems = []
    if SECRET_KEY == _DEV_SECRET_KEY:
        problems.append("set SECRET_KEY to a long random string")
    if not DB_DSN.startswith(("postgres://", "postgresql://", "pgsql://")):
        problems.append("set DB_DSN to a PostgreSQL DSN (postgres://user:password@host:5432/taskflow)")
    if not ALLOWED_HOSTS:
        problems.append("set ALLOWED_HOSTS to the host names the API is served on (comma separated)")
    if DEBUG:
        problems.append("unset DEBUG")
    if problems:
        raise ImproperlyConfigured("ENV=production refuses to start: " + "; ".join(problems) + ".")

DATABASES = {"default": env.db_url_config(DB_DSN)}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    Path(_db["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    _db["OPTIONS"] = {
        # The API and the workers write from separate processes: WAL lets readers run
        # beside the writer, and IMMEDIATE takes the write lock at BEGIN so a claim never
        # deadlocks upgrading a read lock.
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,  # seconds to wait for the write lock
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not :memory:, so worker subprocesses in the tests can open it too.
    _db["TEST"] = {"NAME": str(Path(_db["NAME"]).with_suffix(".test.sqlite3"))}
else:
    _db.setdefault("OPTIONS", {})
    _db["OPTIONS"].setdefault("connect_timeout", 5)  # seconds; /health answers 503 quickly
    _db["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)  # seconds
    _db["CONN_HEALTH_CHECKS"] = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "tasks",
]

MIDDLEWARE = [
    "tasks.middleware.RequestLogMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "taskflow_project.urls"
WSGI_APPLICATION = "taskflow_project.wsgi.application"
APPEND_SLASH = False  # the seed's paths have no trailing slash

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"  # filled by collectstatic (make run, the Dockerfile)
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns about a missing one even while it uses the finders
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True  # serve app static files even before collectstatic

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if PRODUCTION:
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Email: console backend in development, EMAIL_URL (smtp://user:pass@host:587) otherwise.
# django-environ parses the URL into the old EMAIL_* names, which Django 6.1 replaced with MAILERS.
_email = environ.Env.email_url_config(env.str("EMAIL_URL", default="") or "consolemail://")
_smtp_options = {
    "host": _email.get("EMAIL_HOST"),
    "port": _email.get("EMAIL_PORT"),
    "username": _email.get("EMAIL_HOST_USER"),
    "password": _email.get("EMAIL_HOST_PASSWORD"),
    "use_tls": _email.get("EMAIL_USE_TLS"),
    "use_ssl": _email.get("EMAIL_USE_SSL"),
    "timeout": 10,  # seconds
}
MAILERS = {
    "default": {
        "BACKEND": _email["EMAIL_BACKEND"],
        "OPTIONS": (
            {k: v for k, v in _smtp_options.items() if v not in (None, "")}
            if _email["EMAIL_BACKEND"].endswith("smtp.EmailBackend")
            else {}
        ),
    }
}
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="taskflow@localhost")

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["tasks.api.parsers.LimitedJSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "tasks.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "TaskFlow API",
    "DESCRIPTION": "Durable task processing: submit, inspect, retry and cancel tasks.",
    "VERSION": "1.0.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_INCLUDE_SCHEMA": False,
}

# TaskFlow itself.
TASKFLOW = {
    "MAX_BODY_BYTES": env.int("TASKFLOW_MAX_BODY_BYTES", default=1024 * 1024),
    "MAX_BATCH": env.int("TASKFLOW_MAX_BATCH", default=1000),  # tasks per POST /tasks
    "DEFAULT_MAX_ATTEMPTS": env.int("TASKFLOW_MAX_ATTEMPTS", default=3),
    "LEASE_SECONDS": env.float("TASKFLOW_LEASE_SECONDS", default=30.0),
    # PostgreSQL workers are woken by NOTIFY and poll only as a fallback (and for run_after);
    # SQLite has no NOTIFY, so polling is how a new task is found.
    "POLL_INTERVAL_SECONDS": env.float(
        "TASKFLOW_POLL_INTERVAL", default=1.0 if _db["ENGINE"].endswith("postgresql") else 0.2
    ),
    "RETRY_BACKOFF_BASE_SECONDS": env.float("TASKFLOW_RETRY_BACKOFF_BASE", default=2.0),
    "RETRY_BACKOFF_MAX_SECONDS": env.float("TASKFLOW_RETRY_BACKOFF_MAX", default=3600.0),
    # type name -> dotted path, "resize=app.jobs.resize,report=app.jobs.report"; empty is none.
    "HANDLERS": env.dict("TASKFLOW_HANDLERS", default={}) if env.str("TASKFLOW_HANDLERS", default="") else {},
}

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
LOGGING_CONFIG = None  # taskflow_project.logging configures stdlib logging and structlog
from taskflow_project.logging import configure_logging  # noqa: E402

configure_logging(LOG_LEVEL)
