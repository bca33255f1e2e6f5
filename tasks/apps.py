from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "TaskFlow"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from tasks.handlers import registry

        registry.load()
