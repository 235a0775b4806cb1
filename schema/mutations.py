"""Mutations: each builds one command and hands it to the bus; none reads the read model."""

from __future__ import annotations

import strawberry

from domain import commands
from domain.commands import Command
from domain.errors import DomainError
from schema.context import Info
from schema.errors import user_errors
from schema.types import CommandResult, given


async def execute(info: Info, command: Command, idempotency_key: str | None) -> CommandResult:
    try:
        outcome = await info.context.bus.execute(command, given(idempotency_key))
    except DomainError as error:
        return CommandResult.failed(user_errors(error))
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
