"""In-tree gateway plugins. Each subpackage is loaded by name from claudemesh_gateway.plugin_manager.BUILTIN_PLUGINS."""
