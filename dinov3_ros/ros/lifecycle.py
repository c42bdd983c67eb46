"""``dinov3_lifecycle_node``: the perception node as a managed (lifecycle) node.

configure: validate parameters, load the model/engine, create publishers (FAILURE with a clear log on a
bad model); activate: subscribe + start the worker; deactivate: unsubscribe + stop; cleanup: release
publishers and the model. ``--autostart`` (or parameter-free ``main(autostart=True)``) runs
configure + activate itself.
"""

from __future__ import annotations

import sys
from typing import Any

import rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from dinov3_ros.ros import dds
from dinov3_ros.ros.node import PerceptionCore, spin_nodes

NODE_NAME = "dinov3_lifecycle_node"


class PerceptionLifecycleNode(LifecycleNode):
    """Managed perception node; see module docstring for the transitions."""

    def __init__(self, name: str = NODE_NAME, **kwargs: Any) -> None:
        self.core: PerceptionCore | None = None
        super().__init__(name, **kwargs)
        try:
            self.core = PerceptionCore(self, model_read_only=False)
        except Exception:
            super().destroy_node()
            raise

    def destroy_node(self) -> None:
        if self.core is not None:
            self.core.cleanup()
        super().destroy_node()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.core.configure()
        except Exception as exc:  # noqa: BLE001 - any load failure -> FAILURE, node stays unconfigured
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            self.core.cleanup()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.activate()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.cleanup()
        return TransitionCallbackReturn.SUCCESS


def main(args: list[str] | None = None) -> int:
    """Entry point of ``ros2 run dinov3_ros dinov3_lifecycle_node [--autostart]``."""
    argv = list(sys.argv if args is None else args)
    autostart = "--autostart" in argv
    argv = [a for a in argv if a != "--autostart"]
    applied = dds.apply_profile()
    rclpy.init(args=argv)
    if applied:
        rclpy.logging.get_logger(NODE_NAME).info(applied)
    try:
        node = PerceptionLifecycleNode()
    except (ValueError, RuntimeError) as exc:
        rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
        rclpy.shutdown()
        return 1
    try:
        if autostart:
            node.trigger_configure()
            if node.core.settings is None:
                return 1
            node.trigger_activate()
        spin_nodes([node])
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
