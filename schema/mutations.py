"""Mutations: each builds one command and hands it to the bus; none reads the read model."""

from __future__ import annotations

import strawberry
from graphql import GraphQLError

from domain import commands
from domain.commands import Command
from domain.errors import CommitOutcomeUnknown, DomainError, StoreUnavailable
from schema.context import AdminActions, Info, Refusal
from schema.errors import user_errors
from schema.throttle import Throttled
from schema.types import CommandResult, ErrorCode, UserError, given


async def execute(info: Info, command: Command, idempotency_key: str | None) -> CommandResult:
    try:
        outcome = await info.context.bus.execute(
            command,
            given(idempotency_key),
            idempotency_scope=info.context.principal.idempotency_scope,
        )
    except DomainError as error:
        return CommandResult.failed(user_errors(error))
    except StoreUnavailable as error:
        return CommandResult.failed(
            [UserError(code=ErrorCode.UNAVAILABLE, message=str(error), field=None)]
        )
    except CommitOutcomeUnknown as error:
        # The store failed while committing and could not say whether it did: the client
        # retries with the same idempotency key and gets the first result, if there was one.
        raise GraphQLError(
            str(error), extensions={"code": "COMMIT_OUTCOME_UNKNOWN", "retryable": True}
        ) from error
    return CommandResult.succeeded(outcome)


@strawberry.input
class CreateProductInput:
    sku: str
    name: str
    description: str | None = ""
    category: str
    price_cents: int
    initial_stock: int | None = 0


@strawberry.input
class UpdateProductInput:
    name: str | None = strawberry.UNSET
    description: str | None = strawberry.UNSET
    category: str | None = strawberry.UNSET


@strawberry.input
class AddressInput:
    line1: str
    line2: str | None = strawberry.UNSET
    city: str
    postal_code: str
    country: str = strawberry.field(description='ISO 3166-1 alpha-2, e.g. "DE".')

    def to_command(self) -> commands.AddressData:
        return commands.AddressData(
            line1=self.line1,
            line2=given(self.line2),
            city=self.city,
            postal_code=self.postal_code,
            country=self.country,
        )


@strawberry.input
class RegisterCustomerInput:
    email: str
    name: str
    address: AddressInput


@strawberry.input
class OrderLineInput:
    product_id: strawberry.ID
    quantity: int


@strawberry.input
class PlaceOrderInput:
    customer_id: strawberry.ID
    lines: list[OrderLineInput]
    shipping_address: AddressInput | None = strawberry.field(
        default=strawberry.UNSET, description="Defaults to the customer's address."
    )


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def create_product(
        self, info: Info, input: CreateProductInput, idempotency_key: str | None = strawberry.UNSET
    ) -> CommandResult:
        command = commands.CreateProduct(
            sku=input.sku,
            name=input.name,
            description=input.description or "",
            category=input.category,
            price_cents=input.price_cents,
            initial_stock=input.initial_stock or 0,
        )
        return await execute(info, command, idempotency_key)

    @strawberry.mutation
    async def update_product(
        self,
        info: Info,
        id: strawberry.ID,
        input: UpdateProductInput,
        expected_version: int | None = strawberry.UNSET,
        idempotency_key: str | None = strawberry.UNSET,
    ) -> CommandResult:
        command = commands.UpdateProduct(
            product_id=id,
            name=given(input.name),
            description=given(input.description),
            category=given(input.category),
            expected_version=given(expected_version),
        )
        return await execute(info, command, idempotency_key)

    @strawberry.mutation
    async def change_product_price(
        self,
        info: Info,
        id: strawberry.ID,
        price_cents: int,
        expected_version: int | None = strawberry.UNSET,
        idempotency_key: str | None = strawberry.UNSET,
    ) -> CommandResult:
        command = commands.ChangeProductPrice(
            product_id=id, price_cents=price_cents, expected_version=given(expected_version)
        )
        return await execute(info, command, idempotency_key)

    @strawberry.mutation
    async def restock_product(
        self,
        info: Info,
        id: strawberry.ID,
        quantity: int,
        idempotency_key: str | None = strawberry.UNSET,
    ) -> CommandResult:
        command = commands.RestockProduct(product_id=id, quantity=quantity)
        return await execute(info, command, idempotency_key)

    @strawberry.mutation
    async def discontinue_product(
        self,
        info: Info,
        id: strawberry.ID,
        expected_version: int | None = strawberry.UNSET,
        idempotency_key: str | None = strawberry.UNSET,
    ) -> CommandResult:
        command = commands.DiscontinueProduct(
            product_id=id, expected_version=given(expected_version)
        )
        return await execute(info, command, idempotency_key)

    @strawberry.mutation
    async def register_customer(
        self,
        info: Info,
        input: RegisterCustomerInput,
        idempotency_key: str | None = strawberry.UNSET,
    ) -> CommandResult:
        context = info.context
        if context.throttles is not None and not context.principal.valid():
            try:
                context.throttles.signups.take(context.client)
            except Throttled as refused:
                message = (
                    f"too many sign-ups from this address; try again in "
                    f"{refused.retry_after:.0f} s (limit: {refused.setting})"
                )
                return CommandResult.failed(
                    [UserError(code=ErrorCode.RATE_LIMITED, message=message, field=None)]
                )
        command = commands.RegisterCustomer(
            email=input.email, name=input.name, address=input.address.to_command()
        )
        return await execute(info, command, idempotency_key)

    @strawberry.mutation
    async def rename_customer(
        self,
        info: Info,
        id: strawberry.ID,
        name: str,
        expected_version: int | None = strawberry.UNSET,
        idempotency_key: str | None = strawberry.UNSET,
    ) -> CommandResult:
        command = commands.RenameCustomer(
            customer_id=id, name=name, expected_version=given(expected_version)
        )
        return await execute(info, command, idempotency_key)

    @strawberry.mutation
    async def update_customer_address(
        self,
        info: Info,
        id: strawberry.ID,
        address: AddressInput,
        expected_version: int | None = strawberry.UNSET,
        idempotency_key: str | None = strawberry.UNSET,
    ) -> CommandResult:
        command = commands.UpdateCustomerAddress(
            customer_id=id, address=address.to_command(), expected_version=given(expected_version)
        )
        return await execute(info, command, idempotency_key)

    @strawberry.mutation
    async def place_order(
        self, info: Info, input: PlaceOrderInput, idempotency_key: str | None = strawberry.UNSET
    ) -> CommandResult:
        address = given(input.shipping_address)
        command = commands.PlaceOrder(
            customer_id=input.customer_id,
            lines=tuple(
                commands.OrderLineRequest(product_id=line.product_id, quantity=line.quantity)
                for line in input.lines
            ),
            shipping_address=None if address is None else address.to_command(),
        )
        return await execute(info, command, idempotency_key)

    @strawberry.mutation
    async def cancel_order(
        self,
        info: Info,
        id: strawberry.ID,
        reason: str,
        expected_version: int | None = strawberry.UNSET,
        idempotency_key: str | None = strawberry.UNSET,
    ) -> CommandResult:
        command = commands.CancelOrder(
            order_id=id,
            reason=reason,
            expected_version=given(expected_version),
            customer_id=info.context.principal.order_scope,
        )
        return await execute(info, command, idempotency_key)

    @strawberry.mutation
    async def ship_order(
        self,
        info: Info,
        id: strawberry.ID,
        tracking_number: str,
        expected_version: int | None = strawberry.UNSET,
        idempotency_key: str | None = strawberry.UNSET,
    ) -> CommandResult:
        command = commands.ShipOrder(
            order_id=id, tracking_number=tracking_number, expected_version=given(expected_version)
        )
        return await execute(info, command, idempotency_key)

    @strawberry.mutation(  # type: ignore[untyped-decorator]
        description="Admin: rebuilds these projections (all when none are named) from the "
        "whole event log into fresh collections and swaps them in, as `cqrs-shop rebuild` "
        "does. Answers once the rebuild has started; its progress shows in `projections`."
    )
    async def rebuild_projections(
        self, info: Info, names: list[str] | None = strawberry.UNSET
    ) -> CommandResult:
        admin = _admin(info)
        return _answer(await admin.rebuild_projections(given(names)))

    @strawberry.mutation(  # type: ignore[untyped-decorator]
        description="Admin: retries a STALLED projection now instead of after its back-off."
    )
    async def resume_projection(self, info: Info, name: str) -> CommandResult:
        return _answer(await _admin(info).resume_projection(name))


def _admin(info: Info) -> AdminActions:
    admin = info.context.admin
    if admin is None:
        raise GraphQLError("this process runs no admin actions", extensions={"code": "INTERNAL"})
    return admin


def _answer(refusals: list[Refusal]) -> CommandResult:
    if not refusals:
        return CommandResult(success=True, id=None, version=None, aggregate_version=None, errors=[])
    return CommandResult.failed(
        [UserError(code=ErrorCode[r.code], message=r.message, field=r.field) for r in refusals]
    )
